#!/usr/bin/env bash
# The composite action's run step (action.yml). Inputs arrive only as QG_* environment variables,
# never spliced into script text. errexit stays off: the gate's exit code is captured, the step
# outputs are written whatever happened, and the step then exits with the gate's code.
#
# quantgate itself writes the annotations, the step summary and most outputs when
# GITHUB_ACTIONS=true (src/quantgate/report/github.py); it writes them to a private file that is
# copied into $GITHUB_OUTPUT here, with `exit-code` always the process's own code and `verdict`
# filled in when quantgate produced no report (usage error, install failure), so no key is
# written twice.
#
# For tests: QUANTGATE_ACTION_SKIP_INSTALL=1 skips the install and QUANTGATE_PYTHON names the
# interpreter to run `-m quantgate` with.
set -uo pipefail

EXIT_ERROR=2
EXIT_USAGE=4
out_file="${GITHUB_OUTPUT:-/dev/null}"
summary_file="${GITHUB_STEP_SUMMARY:-/dev/null}"

# Input values and quantgate's stderr are untrusted text (a pull request can set a path or add a
# file): none reaches the log, the summary or $GITHUB_OUTPUT raw.

inert() {  # text for the log: control characters as ?, no `##[` (a runner command anywhere in a
  # line), no line-leading `::` (a workflow command); line breaks stay
  printf '%s' "$1" | LC_ALL=C tr '\000-\011\013-\037\177' '?' |
    sed -e 's/##\[/#\\x23[/g' -e 's/^\([[:space:]]*\)::/\1\\x3a:/'
}

shown() {  # one input value as one inert shell word (printf %q: a newline shows as $'\n')
  local quoted
  quoted="$(printf '%q' "$1")"
  inert "$quoted"
}

note() { printf 'quantgate-action: %s\n' "$(inert "$*")" >&2; }

put() {  # put KEY VALUE: one step output in the heredoc form, so no newline in VALUE can add a key
  local delimiter
  delimiter="ghadelimiter_$(od -An -N16 -tx1 /dev/urandom 2>/dev/null | tr -d ' \n')${RANDOM}${RANDOM}"
  printf '%s<<%s\n%s\n%s\n' "$1" "$delimiter" "$2" "$delimiter" >>"$out_file"
}

absolute() {  # absolute, so the report-* and output-dir outputs mean the same file in any later
  # step, whatever working-directory this step ran in
  case "$1" in
    /*) printf '%s' "$1" ;;
    *) printf '%s' "$PWD/$1" ;;
  esac
}

finish() {  # finish CODE VERDICT [MESSAGE]: outputs for a run that produced no report
  local code="$1" verdict="$2" message="${3:-}"
  put verdict "$verdict"
  put exit-code "$code"
  put output-dir "$(absolute "${QG_OUTPUT_DIR:-quantgate-reports}")"
  if [ -n "$message" ]; then
    note "$message"
    # in the summary: inside <pre>, HTML-escaped, so the text can make no markdown, link or tag
    printf '## ⛔ quantgate: %s\n\n<pre>%s</pre>\n' "$verdict" "$(inert "$message" |
      sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g')" >>"$summary_file"
  fi
  exit "$code"
}

is_true() {
  case "$(printf '%s' "$1" | tr '[:upper:]' '[:lower:]')" in
    true | yes | 1 | on) return 0 ;;
    false | no | 0 | off | "") return 1 ;;
    *) finish "$EXIT_USAGE" USAGE "expected true or false, got $(shown "$1")" ;;
  esac
}

# ---------------------------------------------------------------------------------------------
# install

py=python3
command -v python3 >/dev/null 2>&1 || py=python  # Windows runners name it python

cmd=()
if [ "${QUANTGATE_ACTION_SKIP_INSTALL:-}" = 1 ] || ! is_true "${QG_INSTALL:-true}"; then
  if [ -n "${QUANTGATE_PYTHON:-}" ]; then
    cmd=("$QUANTGATE_PYTHON" -m quantgate)
  elif command -v quantgate >/dev/null 2>&1; then
    cmd=(quantgate)
  else
    cmd=("$py" -m quantgate)
  fi
else
  extras="${QG_EXTRAS:-}"
  extras="${extras// /}"
  if [[ -n "$extras" && ! "$extras" =~ ^[A-Za-z0-9_,-]+$ ]]; then
    finish "$EXIT_USAGE" USAGE "extras must be comma-separated names, got $(shown "$QG_EXTRAS")"
  fi
  version="${QG_VERSION:-}"
  if [[ -n "$version" && ! "$version" =~ ^[A-Za-z0-9.+!-]+$ ]]; then
    finish "$EXIT_USAGE" USAGE "version must be a version number such as 0.1.0, got $(shown "$QG_VERSION")"
  fi
  suffix="${extras:+[$extras]}"
  if [ -n "$version" ]; then
    spec="quantgate${suffix}==${version}"
  else
    spec="${GITHUB_ACTION_PATH:?GITHUB_ACTION_PATH is not set}${suffix}"
  fi
  venv="${RUNNER_TEMP:-${TMPDIR:-/tmp}}/quantgate-venv"
  note "installing $spec into $venv"
  vpy="$venv/bin/python"
  [ "$(uname -s 2>/dev/null | cut -c1-5)" = MINGW ] || [ "${RUNNER_OS:-}" = Windows ] && vpy="$venv/Scripts/python.exe"
  if ! { "$py" -m venv "$venv" && "$vpy" -m pip install --quiet --disable-pip-version-check "$spec"; }; then
    finish "$EXIT_ERROR" ERROR "could not install $spec (see the log above)"
  fi
  cmd=("$vpy" -m quantgate)
  # the extras the policy's bounded or required guards need (fidelity -> numpy, onnxruntime): without
  # them those guards cannot run and the gate is an ERROR, so install them from the policy
  policy_args=()
  [ -n "${QG_POLICY:-}" ] && policy_args=(--policy "$QG_POLICY")
  needed="$("${cmd[@]}" extras ${policy_args[@]+"${policy_args[@]}"} 2>/dev/null)"
  if [[ -n "$needed" && "$needed" =~ ^[A-Za-z0-9_,-]+$ ]]; then
    all="${extras:+$extras,}$needed"
    base="${spec%%\[*}"
    [ -n "$version" ] && base="quantgate"
    spec="${base}[${all}]${version:+==$version}"
    note "the policy's guards need the extra(s) $needed: installing $spec"
    "$vpy" -m pip install --quiet --disable-pip-version-check "$spec" ||
      finish "$EXIT_ERROR" ERROR "could not install $spec (see the log above)"
  fi
fi

# ---------------------------------------------------------------------------------------------
# arguments

args=(run --format text)
[ -n "${QG_POLICY:-}" ] && args+=(--policy "$QG_POLICY")
case "${QG_FAIL_ON:-}" in
  "") ;;
  fail | warn) args+=(--fail-on "$QG_FAIL_ON") ;;
  *) finish "$EXIT_USAGE" USAGE "fail-on must be fail or warn, got $(shown "$QG_FAIL_ON")" ;;
esac
is_true "${QG_REPORT_ONLY:-false}" && args+=(--report-only)
is_true "${QG_SHA256:-false}" && args+=(--sha256)
[ -n "${QG_GUARDS:-}" ] && args+=(--guards "${QG_GUARDS// /}")

output_dir="$(absolute "${QG_OUTPUT_DIR:-quantgate-reports}")"
formats=()
IFS=', ' read -r -a formats <<<"${QG_OUTPUTS:-}"
if [ "${#formats[@]}" -gt 0 ]; then
  mkdir -p -- "$output_dir" || finish "$EXIT_USAGE" USAGE "cannot create output-dir $(shown "$output_dir")"
fi
for fmt in ${formats[@]+"${formats[@]}"}; do
  case "$fmt" in
    json) file=report.json ;;
    junit) file=report.xml ;;
    markdown) file=report.md ;;
    html) file=report.html ;;
    text) file=report.txt ;;
    *) file="report.$fmt" ;;  # quantgate rejects an unknown format with exit 4
  esac
  args+=(--output "$fmt=$output_dir/$file")
done
[ -n "${QG_SARIF:-}" ] && args+=(--output "sarif=$QG_SARIF")

# paths: one per line when the input has several lines (paths may hold spaces), else words
paths=()
if [[ "${QG_PATHS:-}" == *$'\n'* ]]; then
  while IFS= read -r line; do
    line="${line#"${line%%[![:space:]]*}"}"
    line="${line%"${line##*[![:space:]]}"}"
    [ -n "$line" ] && paths+=("$line")
  done <<<"$QG_PATHS"
elif [ -n "${QG_PATHS:-}" ]; then
  read -r -a paths <<<"$QG_PATHS"
fi
args+=(-- ${paths[@]+"${paths[@]}"})  # (the +-form: bash 3.2 on macOS under set -u)

# ---------------------------------------------------------------------------------------------
# the gate

private_out="$(mktemp)"
errors="$(mktemp)"
note "$(printf '%q ' "${cmd[@]}" "${args[@]}")"
GITHUB_ACTIONS=true GITHUB_OUTPUT="$private_out" "${cmd[@]}" "${args[@]}" 2> >(tee "$errors" >&2)
code=$?
wait  # for tee to flush

if grep -q '^verdict=' "$private_out"; then
  grep -v '^exit-code=' "$private_out" >>"$out_file"
  put exit-code "$code"
  put output-dir "$output_dir"
  rm -f -- "$private_out" "$errors"
  exit "$code"
fi

# no report: quantgate refused the invocation (4) or died; say why in the summary too
cat -- "$private_out" >>"$out_file"
rm -f -- "$private_out"
verdict=ERROR
[ "$code" -eq "$EXIT_USAGE" ] && verdict=USAGE
reason="$(grep -v '^::' "$errors" | tail -n 20)"
rm -f -- "$errors"
if [ "$code" -eq 0 ]; then
  code=$EXIT_ERROR  # a run that wrote no verdict never passes
fi
finish "$code" "$verdict" "quantgate exited $code without a report:
${reason}"
