import { afterAll, beforeAll } from "vitest";
import { backendConformance } from "../helpers/backend-conformance.js";
import { EXTERNAL_S3, startS3, type S3Server } from "../helpers/s3.js";

let s3: S3Server;
beforeAll(async () => {
  s3 = await startS3();
});
afterAll(async () => {
  await s3.stop();
});

// On s3rver, which ignores conditional PUTs, the lease still refuses a second writer that
// starts while the first holds it (tested here), but not two that race (see s3-lease.test.ts);
// on a server that honours them (radosgw in .ci/run), both.
backendConformance(EXTERNAL_S3 ? `s3 (${process.env.TIDEMARK_TEST_S3_NAME ?? "external"})` : "s3 (s3rver)", {
  newLocation: () => s3.location(),
  exclusiveWriter: true,
  overwrite: (location, target, bytes) => s3.overwrite(location, target, bytes),
});
