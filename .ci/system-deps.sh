#!/bin/sh
# Installs the Debian packages Postdesk's setup or tests need, when missing (root only).
#   system-deps.sh venv        python3-venv, for a Python without the venv module
#   system-deps.sh npm         npm, to fetch the console's htmx once
#   system-deps.sh test PY     postfix, swaks, dovecot-imapd (test peers) and CPython's test
#                              corpus for PY; chromium for the console's browser test;
#                              valgrind for the rule benchmark's instruction count
set -eu
what=$1
missing=""
case "$what" in
  venv) missing="python3-venv" ;;
  npm) command -v npm >/dev/null 2>&1 || missing="npm" ;;
  test)
    command -v swaks >/dev/null 2>&1 || missing="$missing swaks"
    [ -x /usr/sbin/postfix ] || missing="$missing postfix"
    [ -x /usr/sbin/dovecot ] || missing="$missing dovecot-imapd"
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$missing postgresql"
    [ -x /usr/bin/chromium ] || missing="$missing chromium"
    command -v valgrind >/dev/null 2>&1 || missing="$missing valgrind"
    if ! "$2" -c "import test.test_email" 2>/dev/null; then
      ver=$("$2" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
      missing="$missing libpython$ver-testsuite"
    fi ;;
esac
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: please install:$missing (tests needing them will fail)" >&2
  exit 0
fi
echo "system-deps: apt-get install$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
