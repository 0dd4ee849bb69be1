import { describe, expect, it } from "vitest";
import { isUtf8Json } from "../../src/transport/strict-json.js";

describe("isUtf8Json", () => {
  it.each([
    "application/json",
    "Application/JSON",
    "application/json ; charset=utf-8",
    "application/json; charset=utf-8",
    "application/json;charset=UTF-8",
    'application/json; charset="utf-8"',
    "application/json; charset=utf8",
    "application/json; charset = utf-8 ",
    "application/json;\tcharset=\tutf-8",
    "application/json; foo=bar; charset=utf-8; baz",
    "application/json;",
    "application/json; foo",
    'application/json; a="x;charset=latin1"',
    'application/json; x="; charset=utf-8"',
    'application/json; a="x;charset=latin1"; charset=utf-8',
    'application/json; a="quote \\" and ; charset=latin1"; charset="utf-8"',
    "application/json, application/json",
    "application/json; charset=utf-8, application/json; charset=UTF-8",
    'application/json; a="x, charset=latin1", application/json',
    'application/json; charset="utf-8" ; a=b',
  ])("reads %s as UTF-8 JSON", (contentType) => {
    expect(isUtf8Json(contentType)).toBe(true);
  });

  it.each([
    "application/json; charset=iso-8859-1",
    'application/json; charset="utf-16"',
    "application/json; charset=latin1; charset=utf-8",
    "application/json; charset=utf-8; charset=latin1",
    "application/json; charset=",
    'application/json; charset=""',
    "application/json; charset",
    "application/json; charset;",
    "application/json; charset=utf-8x",
    'application/json; charset="utf-8;"',
    "application/json; charset='utf-8'",
    "application/json; a=\"unterminated; charset=utf-8",
    "application/json, application/json; charset=latin1",
    "application/json; charset=latin1, application/json",
    // Another media type on any line (a second Content-Type line, or one folded with a comma).
    "",
    "text/plain",
    "application/jsonx",
    "application/json-seq",
    "application/json, text/plain",
    "application/json; charset=utf-8, text/plain",
    "text/plain, application/json",
    "application/json, ",
    // Parameters that cannot be read for certain.
    'application/json; charset="utf-8"x',
    "application/json; foo=bar charset=latin1",
    "application/json; foo=",
    "application/json; charset*=iso-8859-1''",
    "application/json; CHARSET*=utf-8''",
  ])("refuses %s", (contentType) => {
    expect(isUtf8Json(contentType)).toBe(false);
  });
});
