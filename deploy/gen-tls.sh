#!/usr/bin/env bash
# Make a CA, a server certificate for the API (and gRPC) endpoints, and a client certificate,
# as `dockerd --tlsverify` expects them. Usage: deploy/gen-tls.sh OUTDIR HOSTNAME [IP...]
set -euo pipefail
out=${1:?output directory}; name=${2:?server host name}; shift 2
mkdir -p "$out" && cd "$out"
umask 077
san="DNS:${name},DNS:localhost,IP:127.0.0.1"
for ip in "$@"; do san="${san},IP:${ip}"; done
openssl req -x509 -newkey rsa:4096 -nodes -days 825 -subj "/CN=berth-ca" -keyout ca-key.pem -out ca.pem
openssl req -newkey rsa:4096 -nodes -subj "/CN=${name}" -keyout server-key.pem -out server.csr
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$san" > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 825 \
    -extfile server.ext -out server.pem
openssl req -newkey rsa:4096 -nodes -subj "/CN=client" -keyout key.pem -out client.csr
printf 'extendedKeyUsage=clientAuth\n' > client.ext
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 825 \
    -extfile client.ext -out cert.pem
rm -f ./*.csr ./*.ext ca.srl
chmod 0444 ca.pem server.pem cert.pem
echo "server: ca.pem server.pem server-key.pem   client (DOCKER_CERT_PATH): ca.pem cert.pem key.pem"
