#!/usr/bin/env bash
# Makes the job's mutual-TLS material as a Kubernetes Secret manifest (fedra-tls): a CA, the
# coordinator's certificate for its Service name, and worker-0 .. worker-N-1. Keep the output
# (it holds private keys) out of version control; apply it with kubectl apply -f.
#   deploy/k8s/make-secret.sh --workers 4 [--namespace NS] [--fedra PATH] [--out secret.yaml]
set -euo pipefail
workers=4 namespace=default fedra=${FEDRA:-fedra} out=secret.yaml
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) workers=$2; shift 2 ;;
    --namespace) namespace=$2; shift 2 ;;
    --fedra) fedra=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "make-secret.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
svc=fedra-coordinator
"$fedra" certs --out "$dir" --workers "$workers" \
  --hosts "$svc,$svc.$namespace,$svc.$namespace.svc,$svc.$namespace.svc.cluster.local" > /dev/null
{
  echo "# fedra-tls: made by deploy/k8s/make-secret.sh --workers $workers --namespace $namespace. Private keys: do not commit."
  echo "apiVersion: v1"
  echo "kind: Secret"
  echo "metadata:"
  echo "  name: fedra-tls"
  echo "  namespace: $namespace"
  echo "  labels: {app.kubernetes.io/name: fedra}"
  echo "type: Opaque"
  echo "data:"
  for f in "$dir"/ca.pem "$dir"/coordinator.pem "$dir"/coordinator.key "$dir"/worker-*.pem "$dir"/worker-*.key; do
    echo "  $(basename "$f"): $(base64 -w0 < "$f")"
  done
} > "$out"
chmod 600 "$out"
echo "wrote $out (CA, coordinator for $svc.$namespace, worker-0 .. worker-$((workers - 1)))"
