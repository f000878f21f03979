-- Prosody for the benchmark: loopback only, foreground, run by root, no throttles.
-- @DIR@, @DOMAIN@ (localhost), @IP@ (127.0.0.1), @CERT_DIR@, @CERT@, @KEY@, the ports and the
-- s2s settings (empty but for the s2s scenario) are filled in by bench/lib/prosody.sh.
run_as_root = true
daemonize = false
pidfile = "@DIR@/prosody.pid"
data_path = "@DIR@/data"
log = { warn = "@DIR@/prosody.log" }

interfaces = { "@IP@" }
local_interfaces = { "@IP@" }
c2s_ports = { @C2S_PORT@ }
c2s_direct_tls_ports = { }
s2s_ports = { @S2S_PORTS@ }
-- BOSH at /http-bind and WebSocket at /xmpp-websocket, plain HTTP on loopback.
http_ports = { @HTTP_PORT@ }
http_interfaces = { "@IP@" }
https_ports = { }
component_ports = { }
admin_socket = "@DIR@/prosody.sock"

-- Epoll is 0.12's default backend; spelled out because 10k sockets need it.
network_backend = "epoll"

-- The modules our server has a counterpart for. Deliberately left out: mod_limits (its
-- default c2s rate limit would throttle the benchmark), carbons, smacks, MAM, CSI. PEP,
-- BOSH and WebSocket are on (the pep and web scenarios need them; xmppd has them on).
modules_enabled = {
	"roster"; "saslauth"; "tls"; "disco"; "ping"; "time"; "version";
	"private"; "vcard_legacy"; "lastactivity"; "admin_shell";
	"bosh"; "websocket";
	-- PEP (XEP-0163) with caps-based notifications, for the pep scenario; xmppd has it on.
	"pep";
	@S2S_MODULES@
}

-- Web clients on loopback: plain HTTP counts as secure (as xmppd treats loopback), so SASL
-- is offered; BOSH sessions outlive the scenarios' 60 s wait.
consider_bosh_secure = true
consider_websocket_secure = true
bosh_max_inactivity = 120
bosh_max_wait = 120

c2s_require_encryption = true
allow_registration = false

-- SCRAM-SHA-1 keys stored hashed with the same iteration count as the other servers.
authentication = "internal_hashed"
default_iteration_count = 4096
storage = "internal"

-- The certificate shared by all three servers (Prosody finds DOMAIN.crt/.key there).
certificates = "@CERT_DIR@"
ssl = {
	certificate = "@CERT@";
	key = "@KEY@";
	@S2S_CA@
}
@S2S@

VirtualHost "@DOMAIN@"

-- Multi-user chat for the muc scenarios (xmppd has it at conference.<domain> too).
Component "conference.@DOMAIN@" "muc"
