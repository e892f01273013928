/**
 * Core Lightning commands: `tidemark cln-plugin`, `tidemark cln init`, `tidemark cln import`.
 */
import type { Command } from "commander";

/** Registers the Core Lightning commands. */
export function registerCln(_program: Command): void {}
