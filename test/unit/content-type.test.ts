import { describe, expect, it } from "vitest";
import { declaresUtf8 } from "../../src/transport/strict-json.js";

describe("declaresUtf8", () => {
  it.each([
    undefined,
    "application/json",
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
  ])("reads %s as UTF-8", (contentType) => {
    expect(declaresUtf8(contentType)).toBe(true);
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
  ])("refuses %s", (contentType) => {
    expect(declaresUtf8(contentType)).toBe(false);
  });
});
