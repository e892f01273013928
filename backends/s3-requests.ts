/**
 * What the S3 backend needs around its requests: the URL it is given, and what a failed
 * request means (retry it, "not found", or an error that names the bucket and key and says
 * what to do, never the credentials).
 */
import { defaultProvider } from "@aws-sdk/credential-provider-node";
import { BackendError, TidemarkError, UsageError, parseDuration } from "../src/backend-kit.js";

const URL_PARAMS = ["region", "endpoint", "forcePathStyle", "attempts", "lease"];

// The SDK warns on every process that Node 20 will not be supported by SDK releases from 2027;
// tidemark pins its SDK version, so the notice is noise on every CLI run.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";

/** Where an S3 backup is. */
export interface S3Location {
  readonly bucket: string;
  /** The key prefix, without leading or trailing slashes ("" for the bucket root). */
  readonly prefix: string;
  readonly region: string;
  readonly endpoint?: string;
  readonly forcePathStyle: boolean;
  /** Attempts per request for transient failures. */
  readonly attempts: number;
  /** How long the writer's lease lasts without renewal (`?lease=30s`); the default when absent. */
  readonly leaseMs?: number;
}

/** Parses `s3://bucket/prefix?…`; refuses credentials in the URL and unknown parameters. */
export function parseS3Url(url: URL): S3Location {
  const shown = `s3://${url.hostname}${url.pathname}`;
  if (url.username || url.password) {
    throw new UsageError(`credentials do not go in the URL (${shown})`, {
      hint: "use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile (AWS_PROFILE) or an instance role",
    });
  }
  if (!url.hostname) throw new UsageError(`no bucket in ${url.href}`, { hint: "s3://bucket/prefix?region=…" });
  for (const k of url.searchParams.keys()) {
    if (!URL_PARAMS.includes(k)) throw new UsageError(`unknown parameter "${k}" in ${shown}`, { hint: `known: ${URL_PARAMS.join(", ")}` });
  }
  const endpoint = url.searchParams.get("endpoint") ?? undefined;
  const attempts = Number(url.searchParams.get("attempts") ?? 6);
  if (!Number.isInteger(attempts) || attempts < 1 || attempts > 20) throw new UsageError(`attempts must be 1..20 in ${shown}`);
  const lease = url.searchParams.get("lease");
  const leaseMs = lease === null ? undefined : parseDuration(lease);
  if (leaseMs !== undefined && (leaseMs < 1000 || leaseMs > 3_600_000)) throw new UsageError(`lease must be 1s..1h in ${shown}`, { hint: "the default, 30s, suits most setups" });
  return {
    bucket: url.hostname,
    prefix: decodeURIComponent(url.pathname).replace(/^\/+|\/+$/g, ""),
    region: url.searchParams.get("region") ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? "us-east-1",
    ...(endpoint && { endpoint }),
    forcePathStyle: url.searchParams.get("forcePathStyle") === "true" || (endpoint !== undefined && url.searchParams.get("forcePathStyle") !== "false"),
    attempts,
    ...(leaseMs !== undefined && { leaseMs }),
  };
}

/**
 * The SDK's standard credential chain (environment, shared config and profiles, SSO, web
 * identity, container and instance roles), but with the instance-metadata service asked once
 * with a short timeout: without credentials a command fails in about a second instead of
 * waiting several seconds for an address that is not there.
 */
export function credentialProvider(): ReturnType<typeof defaultProvider> {
  return defaultProvider({ timeout: 1000, maxRetries: 0 });
}

const MISSING_CREDENTIALS = new Set(["CredentialsProviderError", "ProviderError", "TokenProviderError"]);

/** The parts of an SDK or network error that decide what to do. */
export interface S3Failure extends Error {
  code?: string;
  Code?: string;
  $metadata?: { httpStatusCode?: number };
  $response?: { headers?: Record<string, string> };
}

const TRANSIENT_NAMES = new Set(["SlowDown", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable", "TimeoutError"]);
const TRANSIENT_CODES = new Set(["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE", "EAI_AGAIN", "ENOTFOUND", "ECONNABORTED", "EHOSTUNREACH", "ENETUNREACH"]);

export function isTransient(e: S3Failure): boolean {
  const status = e.$metadata?.httpStatusCode;
  if (status !== undefined && (status >= 500 || status === 429)) return true;
  return TRANSIENT_NAMES.has(e.name) || TRANSIENT_CODES.has(e.code ?? "") || (status === undefined && /socket hang up|ECONNRE|EPIPE/.test(e.message));
}

export function isPreconditionFailed(e: S3Failure): boolean {
  return e?.name === "PreconditionFailed" || e?.$metadata?.httpStatusCode === 412 || e?.name === "ConditionalRequestConflict";
}

/**
 * A BackendError naming the operation, bucket and key, with a hint; never the credentials.
 * `writing` says whether the failed command was one that acknowledges changes.
 */
export function describeFailure(op: string, where: string, e: S3Failure, loc: S3Location, attempts: number, writing = true): TidemarkError {
  if (MISSING_CREDENTIALS.has(e.name)) {
    return new TidemarkError("E_CONFIG", `[s3] ${op} ${where}: no AWS credentials found`, {
      cause: e,
      hint: "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (a profile in ~/.aws), or run where an instance role is available",
    });
  }
  const status = e.$metadata?.httpStatusCode;
  const what = `${status ? `${status} ` : ""}${e.name && e.name !== "Error" ? e.name : (e.code ?? "error")}`;
  let hint: string | undefined;
  if (e.name === "NoSuchBucket") hint = `create the bucket ${loc.bucket}, or fix the URL`;
  else if (status === 403 || e.name === "AccessDenied" || e.name === "InvalidAccessKeyId" || e.name === "SignatureDoesNotMatch") {
    hint = "check the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE or the instance role) and the bucket policy";
  } else if (status === 301 || e.name === "PermanentRedirect" || e.name === "AuthorizationHeaderMalformed" || /region/i.test(e.message)) {
    const right = e.$response?.headers?.["x-amz-bucket-region"];
    hint = right ? `the bucket is in ${right}: add ?region=${right} to the URL` : "set ?region= to the bucket's region";
  } else if (isTransient(e)) {
    hint = writing
      ? `the store did not answer after ${attempts} attempts; nothing acknowledged was lost: retry once it is reachable`
      : `the store did not answer after ${attempts} attempts: retry once it is reachable`;
  }
  // The SDK's messages carry no secrets, but may carry request ids; keep them short.
  const detail = `${what}${e.message && e.message !== e.name ? `: ${e.message.split("\n")[0]!.slice(0, 200)}` : ""}`;
  return new BackendError("s3", op, where, detail, { cause: e, ...(hint && { hint }) });
}

export function isNotFound(e: S3Failure): boolean {
  return (e.name === "NoSuchKey" || e.name === "NotFound" || e.$metadata?.httpStatusCode === 404) && e.name !== "NoSuchBucket";
}
