#!/bin/sh
# Writes the secrets and a self-signed wss certificate, then runs FreeSWITCH in the foreground.
set -eu
: "${FREESWITCH_VERTO_PASSWORD:?set FREESWITCH_VERTO_PASSWORD}"
: "${FREESWITCH_ESL_PASSWORD:?set FREESWITCH_ESL_PASSWORD}"
CONF=/etc/freeswitch
umask 077
cat > "$CONF/secrets.xml" <<XML
<include>
  <X-PRE-PROCESS cmd="set" data="verto_password=$FREESWITCH_VERTO_PASSWORD"/>
  <X-PRE-PROCESS cmd="set" data="esl_password=$FREESWITCH_ESL_PASSWORD"/>
</include>
XML
mkdir -p /var/lib/freeswitch/certs /var/lib/freeswitch/db /var/log/freeswitch /run/freeswitch
if [ ! -f /var/lib/freeswitch/certs/wss.pem ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=localhost" \
    -keyout /tmp/key.pem -out /tmp/cert.pem 2>/dev/null
  cat /tmp/cert.pem /tmp/key.pem > /var/lib/freeswitch/certs/wss.pem
  rm -f /tmp/key.pem /tmp/cert.pem
fi
exec /usr/local/freeswitch/bin/freeswitch -nonat -nf -c \
  -conf "$CONF" -log /var/log/freeswitch -db /var/lib/freeswitch/db \
  -run /run/freeswitch -certs /var/lib/freeswitch/certs
