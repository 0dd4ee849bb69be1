import { UAParser } from "ua-parser-js";
import { Bots, Crawlers } from "ua-parser-js/extensions";
import { isBot } from "ua-parser-js/helpers";
import type { DeviceType } from "./model.js";

/** Derives the device type from a User-Agent; ua-parser-js knows far more devices than we could list. */
export function deviceTypeFromUserAgent(userAgent: string): DeviceType {
  if (userAgent === "") return "unknown";
  const result = UAParser(userAgent, [Bots, Crawlers].flat());
  if (isBot(result)) return "bot";
  switch (result.device.type) {
    case "mobile":
      return "mobile";
    case "tablet":
      return "tablet";
    case undefined:
      // ua-parser-js leaves desktops untyped; a known desktop OS tells them apart from the unknown.
      return result.os.name !== undefined ? "desktop" : "unknown";
    default:
      return "unknown";
  }
}
