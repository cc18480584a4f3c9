# SPDX-License-Identifier: LGPL-2.1-or-later
# bash completion for evfdctl(8): its commands and options, and the names a running evfdd knows (services,
# backends, rings, loops), asked of it with the -s/--socket of the command line. Nothing is offered, and
# nothing printed, when evfdd does not answer within 2 seconds.

# _evfdctl_values KEY EVFDCTL ARGS...: the values of KEY (strings or numbers) in `EVFDCTL ARGS...`'s --json
# answer, one a line; evfdctl prints one "key": value a line.
_evfdctl_values()
{
	local key=$1 out
	shift
	if type -P timeout >/dev/null; then
		out=$(timeout 2 "$@" 2>/dev/null </dev/null) || return 0
	else
		out=$("$@" 2>/dev/null </dev/null) || return 0
	fi
	printf '%s\n' "$out" | sed -n \
		-e 's/^ *"'"$key"'": "\(.*\)",\{0,1\}$/\1/' -e 's/\\\(["\\/]\)/\1/g' -e 't p' \
		-e 's/^ *"'"$key"'": \([0-9][0-9]*\),\{0,1\}$/\1/p' -e 'd' -e ':p' -e 'p'
}

# A word as the shell will pass it, near enough: outer quotes off, a leading ~/ made $HOME/.
_evfdctl_dequote()
{
	local w=$1
	if [[ $w == \'*\' || $w == \"*\" ]]; then
		w=${w:1:${#w}-2}
	fi
	[[ $w == "~/"* ]] && w=$HOME/${w#"~/"}
	printf '%s' "$w"
}

_evfdctl()
{
	local -a words=() sock=() args=() cands=()
	local i w cur cmd= expect= cword=0 prog prefix=
	local commands="status loops rings services backends backend move reload upgrade metrics top"
	local options="-s --socket -j --json -h --help -V --version"

	# Put back together what bash split at ':' and '=' (COMP_WORDBREAKS): backend names hold colons.
	for ((i = 0; i < ${#COMP_WORDS[@]}; i++)); do
		w=${COMP_WORDS[i]}
		if ((i > 0)) && [[ $w == +([:=]) || ${COMP_WORDS[i-1]} == +([:=]) ]] && ((${#words[@]})); then
			words[${#words[@]}-1]+=$w
		else
			words+=("$w")
		fi
		((i == COMP_CWORD)) && cword=$((${#words[@]} - 1))
	done
	cur=${words[cword]}
	for ((i = 1; i < cword; i++)); do
		w=${words[i]}
		if [[ -n $expect ]]; then
			[[ $expect == socket ]] && sock=(-s "$(_evfdctl_dequote "$w")")
			expect=
			continue
		fi
		case $w in
		-s | --socket) expect=socket ;;
		--socket=*) sock=(-s "$(_evfdctl_dequote "${w#--socket=}")") ;;
		-s?*) sock=(-s "$(_evfdctl_dequote "${w#-s}")") ;;
		-i | --interval | -n | --iterations) expect=value ;;
		-*) ;;
		*)
			if [[ -z $cmd ]]; then
				cmd=$w
			else
				args+=("$w")
			fi
			;;
		esac
	done
	COMPREPLY=()
	case $expect in
	socket)
		compopt -o filenames 2>/dev/null
		mapfile -t COMPREPLY < <(compgen -f -- "$cur")
		return 0
		;;
	value)
		return 0
		;;
	esac
	if [[ $cur == --socket=* ]]; then
		w=${COMP_WORDS[COMP_CWORD]}
		[[ $w == = ]] && w=
		compopt -o filenames 2>/dev/null
		mapfile -t COMPREPLY < <(compgen -f -- "$w")
		return 0
	fi
	if [[ $cur == -* ]]; then
		[[ $cmd == top ]] && options+=" -i --interval -n --iterations"
		mapfile -t COMPREPLY < <(compgen -W "$options" -- "$cur")
		return 0
	fi
	if [[ -z $cmd ]]; then
		mapfile -t COMPREPLY < <(compgen -W "$commands" -- "$cur")
		return 0
	fi
	prog=$(_evfdctl_dequote "${words[0]}")
	case $cmd:${#args[@]} in
	backends:0 | backend:1)
		mapfile -t cands < <(_evfdctl_values name "$prog" "${sock[@]}" --json services) ;;
	backend:0)
		cands=(drain enable) ;;
	backend:2)
		mapfile -t cands < <(_evfdctl_values backend "$prog" "${sock[@]}" --json backends \
			"$(_evfdctl_dequote "${args[1]}")") ;;
	move:0)
		mapfile -t cands < <(_evfdctl_values id "$prog" "${sock[@]}" --json rings) ;;
	move:1)
		mapfile -t cands < <(_evfdctl_values id "$prog" "${sock[@]}" --json loops) ;;
	*)
		return 0 ;;
	esac
	# bash replaces only what follows the last ':' of the word: offer the rest of each name.
	[[ $COMP_WORDBREAKS == *:* && $cur == *:* ]] && prefix=${cur%"${cur##*:}"}
	for w in "${cands[@]}"; do
		[[ -n $w && $w == "$cur"* ]] && COMPREPLY+=("$(printf '%q' "${w#"$prefix"}")")
	done
	return 0
}

complete -F _evfdctl evfdctl
