#!/bin/sh
# Which programs even start under RLIMIT_AS vs RLIMIT_DATA (the README's table).
# Usage: sh bench/rlimit_startup.sh   (needs prlimit from util-linux, python3, node)
threads='import sys, threading, time
def work(): [bytearray(1000) for _ in range(1000)]; time.sleep(0.2)
ts = [threading.Thread(target=work) for _ in range(int(sys.argv[1]))]
[t.start() for t in ts]; [t.join() for t in ts]'
outcome() {
  timeout 5 prlimit "$@" >/dev/null 2>&1
  case $? in 0) echo ok ;; 124) echo "hangs" ;; 139) echo "SIGSEGV" ;;
    133) echo "V8 fatal (133)" ;; *) echo "fails ($?)" ;; esac
}
printf '| program | %s |\n' "AS 50M | AS 100M | AS 200M | AS 500M | DATA 50M | DATA 100M | DATA 200M"
printf '|---|---|---|---|---|---|---|---|\n'
for prog in "python3 -c pass" "python3 -c threads 4" "python3 -c threads 8" \
            "python3 -c threads 16" "node -e 0"; do
  case $prog in *threads*) label="python3, ${prog##* } threads" ;; *) label=$prog ;; esac
  row="| \`$label\` |"
  for lim in --as=50M --as=100M --as=200M --as=500M --data=50M --data=100M --data=200M; do
    kind=${lim%%=*}; size=$(numfmt --from=iec "${lim#*=}")
    case $prog in
      *threads*) n=${prog##* }; r=$(outcome "$kind=$size" python3 -c "$threads" "$n") ;;
      *) r=$(outcome "$kind=$size" $prog) ;;
    esac
    row="$row $r |"
  done
  echo "$row"
done
