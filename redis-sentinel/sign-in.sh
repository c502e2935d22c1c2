#!/bin/sh
# sign-in.sh PORT COMMAND...: run redis-cli COMMAND (or, without one, the commands on
# stdin) against 127.0.0.1:PORT, signed in with the first of the passwords in
# $REDIS_PASSWORDS (separated by spaces) that Redis or Sentinel there accepts. Prints
# "signed-in N" (N: that password's place in the list, from 0) before the answer;
# exits 3 when none is accepted. The passwords never appear as arguments (ps shows those).
# The redis and redis_sentinel roles run it mid-rotation (README: Security).
port=$1
shift
index=0
for password in $REDIS_PASSWORDS; do
    if [ "$(REDISCLI_AUTH=$password redis-cli -h 127.0.0.1 -p "$port" --no-auth-warning PING 2>&1)" = PONG ]; then
        echo "signed-in $index"
        export REDISCLI_AUTH="$password"
        exec redis-cli -h 127.0.0.1 -p "$port" --no-auth-warning "$@"
    fi
    index=$((index + 1))
done
echo "none of the $index passwords is accepted on port $port" >&2
exit 3
