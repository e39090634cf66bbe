"""Unit tests of the suite's own machinery (no server): the soak's fit, the raw HTTP reader, the zstd
frame builder, case selection and the KNOWN_FAILING bookkeeping. Run: python3 -m unittest
discover -s scripts/hostile -p 'test_*.py'"""

from __future__ import annotations

import random
import socket
import struct
import sys
import threading
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import hostile  # noqa: E402
import soak  # noqa: E402
from cases_findings import fit_slope, zstd_raw_frame  # noqa: E402


class FitTest(unittest.TestCase):
    def test_recovers_both_slopes_and_reports_an_uncertainty_that_covers_them(self):
        rng = random.Random(3)
        rows, ys = [], []
        noise = 0.0
        for t in range(600):
            req = t * 1000 if t < 500 else 500_000  # then idle swaps only
            swaps = t // 30 if t < 500 else 16 + (t - 500) // 10
            noise = 0.8 * noise + rng.gauss(0, 20_000)  # autocorrelated, like RSS samples
            rows.append([1.0, float(req), float(swaps)])
            ys.append(5e6 + 100.0 * req + 200_000.0 * swaps + noise)
        beta, se = soak.ols_hac(rows, ys)
        self.assertLess(abs(beta[1] - 100.0), 4 * se[1] + 1e-9)
        self.assertLess(abs(beta[2] - 200_000.0), 4 * se[2] + 1e-9)
        self.assertGreater(se[1], 0)
        self.assertLess(se[1], 5.0)

    def test_flat_series_has_a_slope_within_its_error_of_zero(self):
        rng = random.Random(4)
        rows = [[1.0, float(i * 100), float(i // 20)] for i in range(300)]
        ys = [8e6 + rng.gauss(0, 4096) for _ in rows]
        beta, se = soak.ols_hac(rows, ys)
        self.assertLess(abs(beta[1]), 4 * se[1])

    def test_singular_design_is_an_error_not_a_number(self):
        with self.assertRaises(ValueError):
            soak.ols_hac([[1.0, 2.0, 0.0]] * 10, [1.0] * 10)

    def test_simple_slope(self):
        b, se = fit_slope([0, 1, 2, 3], [1, 3, 5, 7])
        self.assertAlmostEqual(b, 2.0)
        self.assertAlmostEqual(se, 0.0)


class HttpReaderTest(unittest.TestCase):
    def serve(self, payload: bytes):
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()

        def run():
            c, _ = srv.accept()
            c.recv(65536)
            c.sendall(payload)
            c.close()
            srv.close()

        threading.Thread(target=run, daemon=True).start()
        return srv.getsockname()

    def test_chunked_response_with_json_error(self):
        body = b'{"error": {"code": "x_y", "message": "m"}}'
        addr = self.serve(b"HTTP/1.1 422 Unprocessable Entity\r\nTransfer-Encoding: chunked\r\n\r\n"
                          + harness.chunked(body, 7))
        r = harness.one_request(addr, "GET", "/")
        self.assertEqual((r.status, r.code, r.message), (422, "x_y", "m"))

    def test_close_inside_the_body_is_conn_closed(self):
        addr = self.serve(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        with self.assertRaises(harness.ConnClosed):
            harness.one_request(addr, "GET", "/")

    def test_request_builder_sets_host_and_length(self):
        raw = harness.build_request("POST", "/v1/rank", b"{}", {"X": "1"}, addr=("127.0.0.1", 9))
        self.assertTrue(raw.startswith(b"POST /v1/rank HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"))
        self.assertIn(b"Content-Length: 2\r\n", raw)
        self.assertNotIn(b"Content-Length", harness.build_request("POST", "/", b"{}", content_length=False))


class ZstdFrameTest(unittest.TestCase):
    def test_raw_frame_layout(self):
        data = b"x" * 200_000
        f = zstd_raw_frame(data)
        self.assertEqual(struct.unpack("<I", f[:4])[0], 0xFD2FB528)
        self.assertEqual(struct.unpack("<Q", f[5:13])[0], len(data))
        first = int.from_bytes(f[13:16], "little")
        self.assertEqual(first & 1, 0)  # not the last block
        self.assertEqual(first >> 3, (1 << 17) - 1)
        self.assertEqual(len(f), 13 + 3 + (1 << 17) - 1 + 3 + len(data) - ((1 << 17) - 1))


class BookkeepingTest(unittest.TestCase):
    def test_every_known_failing_entry_names_a_case_and_a_finding(self):
        names = {c.name for c in harness.CASES}
        for name, why in hostile.KNOWN_FAILING.items():
            self.assertIn(name, names)
            self.assertTrue(why.startswith(("finding ", "new finding")), why)

    def test_selection_by_class_name_and_glob(self):
        c = next(c for c in harness.CASES if c.name == "f6.stalled_body_408")
        self.assertTrue(c.matches("f6"))
        self.assertTrue(c.matches("f6.*"))
        self.assertTrue(c.matches("f6.stalled_body_408"))
        self.assertFalse(c.matches("f60"))
        self.assertFalse(c.matches("f7"))

    def test_a_known_failing_case_that_passes_is_stale_and_one_that_fails_is_known(self):
        out = hostile.Printer()
        out.line = lambda s: None
        name = next(iter(hostile.KNOWN_FAILING))
        passing = harness.Case(name, lambda ctx, check: None, "x")
        failing = harness.Case(name, lambda ctx, check: check.expect(False, "no"), "x")
        other = harness.Case("zz.other", lambda ctx, check: check.expect(False, "no"), "x")
        self.assertEqual(hostile.run_case(None, passing, out)["status"], "STALE")
        self.assertEqual(hostile.run_case(None, failing, out)["status"], "known")
        self.assertEqual(hostile.run_case(None, other, out)["status"], "FAIL")

    def test_a_case_that_raises_fails_with_the_error(self):
        out = hostile.Printer()
        out.line = lambda s: None
        boom = harness.Case("zz.boom", lambda ctx, check: 1 / 0, "x")
        r = hostile.run_case(None, boom, out)
        self.assertEqual(r["status"], "FAIL")
        self.assertIn("ZeroDivisionError", r["detail"])


if __name__ == "__main__":
    unittest.main()
