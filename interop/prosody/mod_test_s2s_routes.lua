-- Test-only: static server-to-server routes for Prosody 0.12, which has no option for them
-- and whose resolver ignores /etc/hosts. `test_s2s_routes = { ["one.test"] = { "127.0.0.2", 5269 } }`
-- makes connections to one.test go to that address (STARTTLS, no direct TLS) instead of DNS.
local service = require "net.resolvers.service";
local basic = require "net.resolvers.basic";

local routes = module:get_option("test_s2s_routes", {});
local dns_new = service.new;
-- Yields no target: there is no direct-TLS listener in the tests.
local nothing = { next = function(_, cb) cb(); end };

service.new = function(hostname, service_name, conn_type, extra)
	local route = routes[hostname];
	if route and service_name == "xmpp-server" then
		return basic.new(route[1], route[2], conn_type, extra);
	elseif route then
		return nothing;
	end
	return dns_new(hostname, service_name, conn_type, extra);
end

module:log("info", "static s2s routes loaded");
