// strophe.js over BOSH (XEP-0124/XEP-0206) against the server's /http-bind.
import { config } from "../lib/common.js";
import { stropheScenario } from "../lib/scenario.js";

stropheScenario("bosh", () => config.boshUrl);
