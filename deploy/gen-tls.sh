#!/usr/bin/env bash
# TLS material for Berth, made with openssl. One CA per cluster, kept in OUTDIR: made on the first
# run, reused by every later run (delete ca.pem and ca-key.pem to start a new one).
#
#   deploy/gen-tls.sh OUTDIR HOSTNAME [IP...]
#       the CA (if OUTDIR has none), a server certificate for berthd's API (-H tcp://…:2376, as
#       `dockerd --tlsverify` expects it: server.pem, server-key.pem) and a client certificate for
#       the docker CLI (DOCKER_CERT_PATH: ca.pem, cert.pem, key.pem). server.pem is also valid as
#       a client certificate, so berthd can present it to the nodes (--node-tlscert).
#
#   deploy/gen-tls.sh --node OUTDIR HOSTNAME [IP...]
#       with OUTDIR's CA: a certificate for one host's berth-shim and berth-snapshotter, in
#       OUTDIR/nodes/HOSTNAME/{ca.pem,node.pem,node-key.pem}; copy that directory to the host's
#       /etc/berth/tls/. berthd checks it against the host of the address the node registered
#       (BERTH_SHIM_ADDRESS, BERTH_SNAPSHOTTER_ADDRESS), so list that IP (or use that name).
#
# HOSTNAME becomes a DNS subjectAltName, each IP an IP subjectAltName. Certificates are valid for
# 825 days; keys are RSA of BERTH_TLS_BITS bits (4096 by default).
set -euo pipefail
mode=server
if [[ ${1:-} == --node ]]; then mode=node; shift; fi
out=${1:?usage: gen-tls.sh [--node] OUTDIR HOSTNAME [IP...]}
name=${2:?usage: gen-tls.sh [--node] OUTDIR HOSTNAME [IP...]}
shift 2
bits=${BERTH_TLS_BITS:-4096}
umask 077
mkdir -p "$out" && cd "$out"

# openssl, quiet unless it fails (key generation prints progress dots)
ossl() {
    local err
    if ! err=$(openssl "$@" 2>&1); then printf '%s\n' "$err" >&2; return 1; fi
}

if [[ ! -f ca.pem || ! -f ca-key.pem ]]; then
    if [[ $mode == node ]]; then
        echo "gen-tls.sh: no CA in $out (ca.pem, ca-key.pem): run gen-tls.sh $out API-HOSTNAME first" >&2
        exit 1
    fi
    ossl req -x509 -newkey "rsa:${bits}" -nodes -days 825 -subj "/CN=berth-ca" \
        -keyout ca-key.pem -out ca.pem
    chmod 0444 ca.pem
fi

# sign NAME.csr with the CA, with extension lines $2.. → NAME.pem
sign() {
    local base=$1; shift
    printf '%s\n' "$@" > "${base}.ext"
    ossl x509 -req -in "${base}.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 825 \
        -extfile "${base}.ext" -out "${base}.pem"
    rm -f "${base}.csr" "${base}.ext" ca.srl
    chmod 0444 "${base}.pem"
}

if [[ $mode == node ]]; then
    san="DNS:${name}"
    for ip in "$@"; do san="${san},IP:${ip}"; done
    dir="nodes/${name}"
    mkdir -p "$dir"
    rm -f "$dir/node.pem"
    ossl req -newkey "rsa:${bits}" -nodes -subj "/CN=${name}" -keyout "$dir/node-key.pem" \
        -out "$dir/node.csr"
    sign "$dir/node" "subjectAltName=${san}" "extendedKeyUsage=serverAuth,clientAuth"
    cp ca.pem "$dir/ca.pem" && chmod 0444 "$dir/ca.pem"
    echo "node ${name}: $dir/ca.pem $dir/node.pem $dir/node-key.pem → /etc/berth/tls/ on ${name}"
    exit 0
fi

san="DNS:${name},DNS:localhost,IP:127.0.0.1"
for ip in "$@"; do san="${san},IP:${ip}"; done
rm -f server.pem cert.pem
ossl req -newkey "rsa:${bits}" -nodes -subj "/CN=${name}" -keyout server-key.pem -out server.csr
sign server "subjectAltName=${san}" "extendedKeyUsage=serverAuth,clientAuth"
ossl req -newkey "rsa:${bits}" -nodes -subj "/CN=client" -keyout key.pem -out cert.csr
sign cert "extendedKeyUsage=clientAuth"
echo "server: ca.pem server.pem server-key.pem   client (DOCKER_CERT_PATH): ca.pem cert.pem key.pem"
