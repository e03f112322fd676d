#!/usr/bin/env bash
# Writes a demo extra layer: /etc/imgctl/node.yaml, a NodeConfig for role node with a pre-issued
# kubelet client certificate from a throwaway CA (openssl), so the image configures itself at
# boot without a metadata server. For the demo only: a fleet's nodes get their NodeConfig (and
# credentials) from the imgctl metadata server or EC2 user data, never baked into an image.
#   scripts/demo-node.sh OUTDIR [NODE_NAME]
set -euo pipefail
out=${1:?usage: demo-node.sh OUTDIR [NODE_NAME]}
name=${2:-demo-node}
command -v openssl >/dev/null || { echo "demo-node.sh: openssl missing (apt-get install openssl)" >&2; exit 2; }
rm -rf "$out"
mkdir -p "$out/etc/imgctl"
pki=$(mktemp -d)
trap 'rm -rf "$pki"' EXIT
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
openssl req -x509 "${ec[@]}" -keyout "$pki/ca.key" -out "$pki/ca.crt" -days 2 -subj /CN=imgctl-demo-ca 2>/dev/null
openssl req -new "${ec[@]}" -keyout "$pki/node.key" -out "$pki/node.csr" -subj "/O=system:nodes/CN=system:node:$name" 2>/dev/null
printf 'keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' > "$pki/ext"
openssl x509 -req -in "$pki/node.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
  -out "$pki/node.crt" -days 2 -extfile "$pki/ext" 2>/dev/null
indent() { sed 's/^/      /' "$1"; }
{
  cat <<YAML
# Demo NodeConfig (scripts/demo-node.sh): role node, pre-issued client certificate. The API
# server address is the qemu user network's host, which restrict=on keeps unreachable: the
# kubelet runs and serves /healthz, but does not register anywhere.
apiVersion: imgctl/v1alpha1
kind: NodeConfig
metadata:
  name: $name
spec:
  role: node
  cluster:
    apiServer: https://10.0.2.2:6443
    caCertificate: |
$(indent "$pki/ca.crt")
  kubelet:
    nodeLabels: {imgctl.dev/demo: "true"}
  credentials:
    clientCertificate: |
$(indent "$pki/node.crt")
    clientKey: |
$(indent "$pki/node.key")
YAML
} > "$out/etc/imgctl/node.yaml"
chmod 600 "$out/etc/imgctl/node.yaml"
# systemd stops printing its status on the console once a getty owns it (serial-getty@ttyS0 is
# Type=idle with a 5 s limit), so on a slow boot "Reached target multi-user.target" may never
# appear: the demo says it itself, after multi-user.target, for scripts/boot-qemu.sh.
mkdir -p "$out/etc/systemd/system/multi-user.target.wants"
cat > "$out/etc/systemd/system/imgctl-demo-ready.service" <<'UNIT'
[Unit]
Description=imgctl demo: report multi-user.target on the console
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "imgctl-demo: multi-user.target reached, uptime $(cut -d" " -f1 /proc/uptime) s" > /dev/console'

[Install]
WantedBy=multi-user.target
UNIT
ln -sf ../imgctl-demo-ready.service "$out/etc/systemd/system/multi-user.target.wants/imgctl-demo-ready.service"
echo "$out/etc/imgctl/node.yaml: role node, name $name" >&2
