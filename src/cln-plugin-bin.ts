#!/usr/bin/env node
/**
 * `tidemark-cln-plugin`: `tidemark cln-plugin` as one executable, because lightningd starts a
 * plugin without arguments.
 */
process.argv.splice(2, 0, "cln-plugin");
await import("./cli.js");
