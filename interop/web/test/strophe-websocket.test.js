// strophe.js over WebSocket (RFC 7395) against the server's /xmpp-websocket.
import { config } from "../lib/common.js";
import { stropheScenario } from "../lib/scenario.js";

stropheScenario("websocket", () => config.wsUrl);
