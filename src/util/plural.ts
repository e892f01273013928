/**
 * Counted nouns and version ranges for messages: "1 statement", "2 statements",
 * "version 4", "versions 4..9".
 */

/** `n` and the noun, plural unless n is 1: count(1, "change") is "1 change". */
export function count(n: number, noun: string, plural = `${noun}s`): string {
  return `${n} ${n === 1 ? noun : plural}`;
}

/** "version 4" when from equals to, else "versions 4..9". */
export function versionRange(from: number, to: number): string {
  return from === to ? `version ${from}` : `versions ${from}..${to}`;
}
