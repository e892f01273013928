/**
 * The operator's side of a refused `db_write`: one log line that says what happened and what to
 * do. The plugin sends it to lightningd's log at level "broken" before answering the hook with
 * anything but "continue", which makes lightningd stop without committing.
 */
import path from "node:path";
import { GapError, StaleError, TidemarkError } from "../util/errors.js";
import { NODE_DB_FILE } from "./node-db.js";

/** What the plugin knew when it refused. */
export interface RefusalContext {
  /** The hook's data_version, when the params could be read. */
  readonly dataVersion: number | undefined;
  /** True for the first write since the plugin started: the start-up version check. */
  readonly firstWrite: boolean;
  /** The lightning directory that holds backup.lock. */
  readonly lightningDir: string;
  /** Where changes go, when the destination could be opened. */
  readonly destination?: string;
  /** The command that restores the node database from the backup into a given file. */
  readonly restoreCommand?: (dest: string) => string;
}

const STOP = "lightningd must stop; it will not commit this write";

/** The log line for a refused write. */
export function refusalMessage(err: unknown, ctx: RefusalContext): string {
  const v = ctx.dataVersion;
  const what = v === undefined ? "refusing db_write" : `refusing db_write for data_version ${v}`;
  const backup = ctx.destination ?? "the backup";
  const reinit =
    `With lightningd stopped, start a new backup from the node database: ` +
    `tidemark cln init <new backup location> --lightning-dir ${ctx.lightningDir} --force; then start lightningd.`;
  if (err instanceof GapError && v !== undefined) {
    const h = err.head;
    const why = ctx.firstWrite
      ? `the backup is out of date: lightningd is at data_version ${v - 1}, but ${backup} ends at version ${h}, ` +
        `so ${versions(h + 1, v - 1)} missing (lightningd ran without this plugin, or backup.lock names another node's backup)`
      : `lightningd skipped versions: data_version ${v} came right after ${h}, so ${versions(h + 1, v - 1)} not in ${backup}`;
    return `tidemark: ${what}: ${why}. ${STOP}. ${reinit}`;
  }
  if (err instanceof StaleError && v !== undefined) {
    const h = err.head;
    const why = ctx.firstWrite
      ? `lightningd lost state: it is at data_version ${v - 1}, but ${backup} already holds version ${h} ` +
        `(was ${NODE_DB_FILE} replaced by an older copy?)`
      : `lightningd went back to data_version ${v} after version ${h} was acknowledged (is a second lightningd using this database?)`;
    const dest = path.join(ctx.lightningDir, NODE_DB_FILE);
    const restore = ctx.restoreCommand
      ? `restore the node database from the backup: move ${dest} aside, then ${ctx.restoreCommand(dest)}`
      : "restore the node database from the backup with tidemark restore … --rules core-lightning";
    return `tidemark: ${what}: ${why}. ${STOP}, and must not run on this database again. Do not continue: ${restore}; then start lightningd.`;
  }
  const message = err instanceof Error ? err.message : String(err);
  const hint = err instanceof TidemarkError && err.hint ? ` Try: ${err.hint}.` : "";
  return `tidemark: ${what}: ${message}. ${STOP}; nothing acknowledged was lost.${hint}`;
}

/** "version 5 is" or "versions 5..7 are". */
function versions(from: number, to: number): string {
  return from === to ? `version ${from} is` : `versions ${from}..${to} are`;
}
