import { afterAll, beforeAll } from "vitest";
import { backendConformance } from "../helpers/backend-conformance.js";
import { startS3, type S3Server } from "../helpers/s3.js";

let s3: S3Server;
beforeAll(async () => {
  s3 = await startS3();
});
afterAll(async () => {
  await s3.stop();
});

// s3rver ignores conditional PUTs; the lease then still refuses a second writer that starts
// while the first holds it (tested here), but not two that race (see s3-lease.test.ts).
backendConformance("s3 (s3rver)", {
  newLocation: () => s3.location(),
  exclusiveWriter: true,
  overwrite: async (location, target, bytes) => s3.overwrite(location, target, bytes),
});
