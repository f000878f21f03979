-- XEP-0156 host-meta for the web interop tests when they run against Prosody (0.12 ships
-- no such module): /.well-known/host-meta (XRD) and /.well-known/host-meta.json listing
-- the BOSH and WebSocket URLs given as web_host_meta_bosh and web_host_meta_websocket.
local bosh = module:get_option_string("web_host_meta_bosh")
local websocket = module:get_option_string("web_host_meta_websocket")

local xrd = ([[<?xml version='1.0' encoding='utf-8'?>
<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>
  <Link rel='urn:xmpp:alt-connections:xbosh' href='%s'/>
  <Link rel='urn:xmpp:alt-connections:websocket' href='%s'/>
</XRD>
]]):format(bosh, websocket)
local json = ([[{"links":[{"rel":"urn:xmpp:alt-connections:xbosh","href":"%s"},]]
    .. [[{"rel":"urn:xmpp:alt-connections:websocket","href":"%s"}]}]]):format(bosh, websocket)

local function serve(body, content_type)
    return function(event)
        event.response.headers.content_type = content_type
        event.response.headers.access_control_allow_origin = "*"
        return body
    end
end

module:depends("http")
module:provides("http", {
    default_path = "/.well-known";
    route = {
        ["GET /host-meta"] = serve(xrd, "application/xrd+xml");
        ["GET /host-meta.json"] = serve(json, "application/json");
    };
})
