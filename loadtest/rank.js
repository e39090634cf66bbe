// k6 load test for POST /v1/rank with thresholds; exits non-zero when they are missed.
//
//   k6 run -e BODIES=dir -e FORMAT=json|proto -e COUNT=8 -e VUS=8 -e DURATION=30s -e P99_MS=50 loadtest/rank.js
//
// BODIES is a directory written by `prerank bodies <version-dir> --candidates N --count COUNT
// --out-dir DIR`: body-<i>.json and body-<i>.pb are the same request in the two encodings (candidates
// and behaviours drawn from the snapshot's real ids). They are read once in the init context, so the
// load generator spends its time sending, not serialising 10^5-id arrays. Targets 127.0.0.1 only by
// default. Thresholds: error rate < 0.1 % and p99 < P99_MS; k6 exits 99 when one is missed.
import http from 'k6/http';
import { check } from 'k6';

const URL = __ENV.URL || 'http://127.0.0.1:8080';
const DIR = __ENV.BODIES || 'bodies';
const FORMAT = __ENV.FORMAT || 'json';
const COUNT = parseInt(__ENV.COUNT || '8');
const P99_MS = parseFloat(__ENV.P99_MS || '50');
const CT = FORMAT === 'proto' ? 'application/x-protobuf' : 'application/json';
const bodies = [];
for (let i = 0; i < COUNT; i++) {
  bodies.push(FORMAT === 'proto' ? open(`${DIR}/body-${i}.pb`, 'b') : open(`${DIR}/body-${i}.json`));
}

export const options = {
  vus: parseInt(__ENV.VUS || '8'),
  duration: __ENV.DURATION || '30s',
  thresholds: {
    http_req_failed: ['rate<0.001'],
    http_req_duration: [`p(99)<${P99_MS}`],
    checks: ['rate>0.999'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'max'],
};

export default function () {
  const res = http.post(`${URL}/v1/rank`, bodies[__ITER % bodies.length],
    { headers: { 'Content-Type': CT, Accept: CT } });
  check(res, { 'status is 200': (r) => r.status === 200 });
}
