// k6 load test for POST /v1/rank with thresholds; exits non-zero when they are missed.
//
//   k6 run -e IDS=ids.txt -e N=10000 -e K=1000 -e VUS=8 -e DURATION=30s loadtest/rank.js
//
// IDS is a file of item ids, one per line (`prerank inspect <version-dir> --ids > ids.txt`).
// Bodies are built once in the init context (8 different users/candidate sets) so the load generator
// spends its time sending, not serialising 10^5-id arrays. Targets 127.0.0.1 only by default.
import http from 'k6/http';
import { check } from 'k6';

const URL = __ENV.URL || 'http://127.0.0.1:8080';
const N = parseInt(__ENV.N || '10000');
const K = parseInt(__ENV.K || '1000');
const P99_MS = parseFloat(__ENV.P99_MS || '50');
const ids = open(__ENV.IDS || 'ids.txt').split('\n').filter((l) => l.length > 0);

function body(seed) {
  let x = seed * 2654435761 % 4294967296;
  const rnd = () => { x = (x * 1664525 + 1013904223) % 4294967296; return x / 4294967296; };
  const cands = [];
  for (let i = 0; i < N; i++) cands.push(ids[Math.floor(rnd() * ids.length)]);
  const behaviors = [];
  for (let i = 0; i < 50; i++) {
    behaviors.push({ item_id: ids[Math.floor(rnd() * ids.length)], action: 'click',
      seconds_ago: Math.floor(rnd() * 86400), dwell_seconds: Math.floor(rnd() * 120) });
  }
  // ids are u64 decimal strings in the file; emit them as JSON numbers without float rounding.
  return `{"user":{"id":${seed},"features":{"age":${20 + seed},"gender":"f"},"behaviors":${JSON.stringify(behaviors).replace(/"item_id":"(\d+)"/g, '"item_id":$1')}},"k":${K},"candidates":[${cands.join(',')}]}`;
}
const bodies = [];
for (let s = 1; s <= 8; s++) bodies.push(body(s));

export const options = {
  vus: parseInt(__ENV.VUS || '8'),
  duration: __ENV.DURATION || '30s',
  thresholds: {
    http_req_failed: ['rate<0.001'],
    http_req_duration: [`p(99)<${P99_MS}`],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'max'],
};

export default function () {
  const res = http.post(`${URL}/v1/rank`, bodies[__ITER % bodies.length],
    { headers: { 'Content-Type': 'application/json' } });
  check(res, { 'status is 200': (r) => r.status === 200 });
}
