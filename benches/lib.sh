# Shell helpers shared by compare.sh and ab.sh (sourced, not run).

# wait_port PORT: returns once something listens on 127.0.0.1:PORT; exits the script after 10 s.
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listening on port $1" >&2
  exit 1
}

# make_cert DIR: DIR/cert.pem and DIR/key.pem, a self-signed P-256 certificate for 127.0.0.1 and
# localhost (one certificate type for every TLS server, so the handshakes compare).
make_cert() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$1/key.pem" -out "$1/cert.pem" 2>/dev/null
}
