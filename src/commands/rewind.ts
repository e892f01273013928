/**
 * `tidemark rewind <backend>`
 */
import type { Command } from "commander";
import { addCodecOptions, codecOptions, viaDaemonWhenLocked, withBackend, type CodecFlags } from "./common.js";

/** Registers the command. */
export function registerRewind(program: Command): void {
  const cmd = program
    .command("rewind")
    .summary("drop the last change (the host never committed it)")
    .description(
      "Drop the last change durably, for a host that died after the ack and before its commit. Only the\n" +
        "last change can be rewound, and only once; a rewound change never reappears in a restore.\n" +
        "Hosts rarely need this: ingest rewinds by itself when a change repeats the head version.",
    )
    .argument("<backend>", "the backup: a directory path, file:PATH, or a backend URL");
  addCodecOptions(cmd, true);
  cmd
    .action(async (location: string, opts: CodecFlags) => {
      await viaDaemonWhenLocked("rewind", () =>
        withBackend(location, "write", async (backend) => {
          const before = backend.head().version;
          await backend.rewind();
          process.stdout.write(`rewound version ${before}; the head is now ${backend.head().version}\n`);
        }, codecOptions(opts)),
      );
    });
}
