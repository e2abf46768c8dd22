"""The Python client's connection options against the real daemon: TLS plus a bearer token on
TCP (certificates made with the openssl command), and the refusals without them."""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

WEIGHTD, PACKAGE = sys.argv[1], sys.argv[2]
del sys.argv[1:3]
sys.path.insert(0, PACKAGE)
import grpc  # noqa: E402
import weightd  # noqa: E402


def run(command, cwd):
    subprocess.run(command, cwd=cwd, check=True, shell=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


class PythonAccessTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = d = tempfile.mkdtemp(prefix="weightd-pyaccess-")
        run("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca "
            "-keyout ca.key -out ca.pem", d)
        with open(os.path.join(d, "san.ext"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        run("openssl req -newkey rsa:2048 -nodes -subj /CN=weightd -keyout server.key "
            "-out server.csr", d)
        run("openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
            "-days 2 -extfile san.ext -out server.pem", d)
        with open(os.path.join(d, "token"), "w") as f:
            f.write("py-token-5678\n")
        with open(os.path.join(d, "wrong"), "w") as f:
            f.write("nope\n")
        os.makedirs(os.path.join(d, "models"))
        cls.process = subprocess.Popen(
            [WEIGHTD, "--listen=127.0.0.1:0", "--model_root=" + os.path.join(d, "models"),
             "--metrics_address=", "--tls_cert_file=" + os.path.join(d, "server.pem"),
             "--tls_key_file=" + os.path.join(d, "server.key"),
             "--auth_token_file=" + os.path.join(d, "token")],
            stderr=subprocess.PIPE, text=True)
        for line in cls.process.stderr:
            if "weightd ready" in line:
                cls.address = "127.0.0.1:" + re.search(r"127\.0\.0\.1:(\d+)", line).group(1)
                break
        else:
            raise RuntimeError("weightd did not start")

    @classmethod
    def tearDownClass(cls):
        cls.process.terminate()
        cls.process.wait(timeout=20)
        cls.process.stderr.close()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.dir, name)

    def test_tls_and_token_work_including_health(self):
        with weightd.Client(self.address, backend="numpy", timeout=10,
                            tls_ca_file=self.path("ca.pem"),
                            token_file=self.path("token")) as client:
            self.assertEqual(client.list(), [])
            self.assertEqual(client.health(), "SERVING")

    def test_token_from_the_environment(self):
        os.environ["WEIGHTD_TOKEN_FILE"] = self.path("token")
        os.environ["WEIGHTD_TLS_CA_FILE"] = self.path("ca.pem")
        try:
            with weightd.Client(self.address, backend="numpy", timeout=10) as client:
                self.assertEqual(client.list(), [])
        finally:
            del os.environ["WEIGHTD_TOKEN_FILE"], os.environ["WEIGHTD_TLS_CA_FILE"]

    def test_missing_or_wrong_token_is_unauthenticated(self):
        for token in (None, self.path("wrong")):
            with weightd.Client(self.address, backend="numpy", timeout=10,
                                tls_ca_file=self.path("ca.pem"), token_file=token) as client:
                with self.assertRaises(weightd.WeightdError) as caught:
                    client.list()
                self.assertEqual(caught.exception.code, grpc.StatusCode.UNAUTHENTICATED)

    def test_plaintext_fails_and_a_plaintext_token_is_refused(self):
        with weightd.Client(self.address, backend="numpy", timeout=3) as client:
            with self.assertRaises(weightd.WeightdError) as caught:
                client.list()
            self.assertNotEqual(caught.exception.code, grpc.StatusCode.OK)
        with self.assertRaises(ValueError):
            weightd.Client(self.address, backend="numpy", token_file=self.path("token"))


if __name__ == "__main__":
    unittest.main()
