#!/bin/sh
# Install the coldchain gateway agent on a Raspberry Pi (or any systemd Linux box).
#
#   sudo deploy/pi/install.sh [--source DIR_OR_WHEEL] [--enable-interfaces] [--no-start]
#
# Creates the system user coldchain-gw, a virtualenv in /opt/coldchain-gateway with
# `pip install <source>[gateway]`, /etc/coldchain-gateway (config and secrets, root:coldchain-gw
# 0750), the state folder /var/lib/coldchain-gateway (via systemd's StateDirectory), and the
# systemd unit. Re-running it upgrades the agent and keeps the config and the outbox.
set -eu

PREFIX=/opt/coldchain-gateway
CONF_DIR=/etc/coldchain-gateway
UNIT=/etc/systemd/system/coldchain-gateway.service
USER_NAME=coldchain-gw
HERE=$(cd "$(dirname "$0")" && pwd)
SOURCE=$(cd "$HERE/../.." && pwd)
ENABLE_INTERFACES=0
START=1

while [ $# -gt 0 ]; do
    case "$1" in
        --source) SOURCE=$2; shift 2 ;;
        --enable-interfaces) ENABLE_INTERFACES=1; shift ;;
        --no-start) START=0; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    echo "run as root (sudo $0)" >&2
    exit 1
fi

echo "== packages"
if command -v apt-get >/dev/null 2>&1; then
    apt-get update -q
    apt-get install -y -q python3 python3-venv python3-pip
fi

echo "== system user $USER_NAME"
if ! id "$USER_NAME" >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/coldchain-gateway --no-create-home \
        --shell /usr/sbin/nologin "$USER_NAME"
fi
for group in dialout i2c gpio; do
    if getent group "$group" >/dev/null 2>&1; then
        usermod -a -G "$group" "$USER_NAME"
    else
        echo "   (no group $group on this system: remove it from SupplementaryGroups in the unit)"
    fi
done

echo "== virtualenv $PREFIX from $SOURCE"
python3 -m venv "$PREFIX"
"$PREFIX/bin/pip" install -q --upgrade pip
"$PREFIX/bin/pip" install -q "$SOURCE[gateway]"

echo "== configuration $CONF_DIR"
install -d -o root -g "$USER_NAME" -m 0750 "$CONF_DIR"
if [ ! -f "$CONF_DIR/agent.toml" ]; then
    install -o root -g "$USER_NAME" -m 0640 "$HERE/agent.toml.example" "$CONF_DIR/agent.toml"
    echo "   wrote $CONF_DIR/agent.toml: edit the device ids, driver and broker before starting"
    START=0
fi

if [ "$ENABLE_INTERFACES" -eq 1 ]; then
    BOOT_CONFIG=/boot/firmware/config.txt
    [ -f "$BOOT_CONFIG" ] || BOOT_CONFIG=/boot/config.txt
    if [ -f "$BOOT_CONFIG" ]; then
        echo "== enabling 1-Wire (GPIO4) and I2C in $BOOT_CONFIG (takes effect after a reboot)"
        grep -q '^dtoverlay=w1-gpio' "$BOOT_CONFIG" || echo 'dtoverlay=w1-gpio' >> "$BOOT_CONFIG"
        grep -q '^dtparam=i2c_arm=on' "$BOOT_CONFIG" || echo 'dtparam=i2c_arm=on' >> "$BOOT_CONFIG"
        grep -q '^i2c-dev' /etc/modules 2>/dev/null || echo 'i2c-dev' >> /etc/modules
    else
        echo "   no Raspberry Pi boot config found; enable 1-Wire/I2C by hand" >&2
    fi
fi

echo "== systemd unit"
install -o root -g root -m 0644 "$HERE/coldchain-gateway.service" "$UNIT"
systemctl daemon-reload
systemctl enable coldchain-gateway.service
if [ "$START" -eq 1 ]; then
    systemctl restart coldchain-gateway.service
    sleep 2
    systemctl --no-pager status coldchain-gateway.service || true
else
    echo "   not started; when the config is ready: systemctl start coldchain-gateway"
fi
echo "== done: 'sudo -u $USER_NAME $PREFIX/bin/gateway-agent --config $CONF_DIR/agent.toml status'"
