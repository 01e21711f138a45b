# corral reference guest: reads a cloud-init NoCloud seed for corral-nocloud
# (busybox awk: one process for the whole seed).
#
#   awk -f nocloud.awk [-v root=DIR] [-v dump=1] \
#       role=meta META-DATA role=user USER-DATA role=net NETWORK-CONFIG
#
# Each file is parsed as YAML into PATH -> scalar pairs: mapping keys joined with
# ".", sequence items numbered from 0 (public-keys.0, write_files.1.path). The
# YAML read is what seeds hold: block mappings and sequences (also a sequence at
# its key's indentation, as PyYAML writes them), plain, 'single-' and
# "double-quoted" scalars (over several lines, folded, with escapes), literal (|)
# and folded (>) block scalars with their chomping indicator, flow collections
# on one line ({macaddress: "52:54:00:12:34:56"}, [a, b]), comments, "---".
# Not read: anchors and aliases, tags other than !!str, flow collections over
# several lines, several documents in one file.
#
# What is used (the rest is ignored):
#   meta-data       instance-id; local-hostname; public-keys (a list, one key, or
#                   a mapping of keys)
#   user-data       decided by its first line that is not blank:
#                   "#cloud-config" (any case): these keys (others get a warning)
#                     hostname             wins over local-hostname
#                     ssh_authorized_keys  a list of keys
#                     runcmd               a list of commands, each a string (a
#                                          line of sh) or a list of arguments
#                     write_files          a list of path, content, permissions
#                                          (default 0644), encoding (text, b64,
#                                          gz+b64), append; owner root only
#                   "#!": a script, run as it is
#                   anything else: ignored, with a warning
#   network-config  version 2, possibly under "network:"; "config: disabled";
#                   ethernets, each with match (macaddress; name, with globs),
#                   set-name, dhcp4, addresses (IPv4 a.b.c.d/n), gateway4,
#                   routes to default, nameservers (addresses, search)
#
# With dump=1 the pairs are printed (ROLE:PATH=VALUE, with \n and \\ escaped)
# and nothing else is done. Otherwise, below root (default /):
#   - every boot: the host name goes to /proc/sys/kernel/hostname and
#     /etc/hostname (its first label) and to the 127.0.1.1 line of /etc/hosts
#     (files rewritten only when they change);
#   - for a new instance-id (not the one in /var/lib/cloud/instance-id): the keys
#     are added to /root/.ssh/authorized_keys (each once); write_files becomes
#     the sh script run/corral-nocloud/write-files; runcmd becomes
#     /var/lib/cloud/scripts/runcmd and a "#!" user-data
#     /var/lib/cloud/scripts/user-data, both listed in run/corral-nocloud/final;
#   - run/corral-nocloud/env: shell assignments (instance_id, new_instance,
#     hostname, keys_added, files, scripts, userdata, network);
#     run/corral-nocloud/net: one line per ethernet, "ID MAC NAME SET-NAME DHCP4
#     ADDRESSES GATEWAY DNS SEARCH" ("-" for none, lists joined with ",", each
#     address as ADDRESS/PREFIX/NETMASK); run/corral-nocloud/warnings: one line
#     per warning.
# The directories run/corral-nocloud, root/.ssh and var/lib/cloud/scripts must
# exist: busybox awk stops at a file it cannot open.

BEGIN {
    if (root == "/") root = ""
    out = root "/run/corral-nocloud"
    nwarn = 0
    old_id = ""
    if ((getline old_id < (root "/var/lib/cloud/instance-id")) <= 0) old_id = ""
    close(root "/var/lib/cloud/instance-id")
    user_kind = "none"
    file_role = ""
}

# ---------------------------------------------------------------------------
# Reading the files, one line at a time

FNR == 1 {
    finish_file()
    file_role = role
    start_file()
}

{
    line = $0
    sub(/\r$/, "", line)
    if (file_role == "user") {
        # the first line that is not blank says what the user-data is, as for cloud-init
        if (user_kind == "none") {
            if (line !~ /[^ \t]/) next
            first = line
            sub(/^[ \t]+/, "", first)
            first = tolower(first)
            if (first ~ /^#cloud-config[ \t]*$/) user_kind = "cloud-config"
            else if (first ~ /^#!/) user_kind = "script"
            else user_kind = "ignored"
        }
        if (user_kind == "script") {
            script_lines[++nscript] = line
            next
        }
        if (user_kind != "cloud-config") next
    }
    yaml_line(line)
}

END {
    finish_file()
    if (dump) {
        print "#userdata=" user_kind
        for (i = 1; i <= npairs; i++) {
            v = V[pair[i]]
            gsub(/\\/, "\\\\", v)
            gsub(/\n/, "\\n", v)
            print pair[i] "=" v
        }
        exit 0
    }
    act()
}

function start_file() {
    depth = 0
    cind[0] = 0
    ctype[0] = "map"
    cpath[0] = ""
    pend = ""
    mode = ""
}

function finish_file() {
    if (file_role == "") return
    if (mode == "block") end_block()
    else if (mode == "quoted") {
        warn(file_role_name() ": a quoted string is not closed")
        mode = ""
    }
    if (pend != "") { set_value(pend, ""); pend = "" }
}

function file_role_name() {
    if (file_role == "meta") return "meta-data"
    if (file_role == "user") return "user-data"
    return "network-config"
}

function warn(message) {
    warning[++nwarn] = message
}

# ---------------------------------------------------------------------------
# YAML, block structure

function yaml_line(line,    col, t, text) {
    if (mode == "block") {
        if (block_line(line)) return
    }
    if (mode == "quoted") {
        quoted_line(line)
        return
    }
    if (line ~ /^[ \t]*(#.*)?$/) return
    if (line ~ /^(---|\.\.\.)([ \t].*)?$/) {
        text = line
        sub(/^(---|\.\.\.)[ \t]*/, "", text)
        if (text == "" || text ~ /^#/) return
        line = text
    }
    match(line, /^ */)
    col = RLENGTH
    t = substr(line, col + 1)
    node(col, t)
}

function is_item(t) {
    return t == "-" || t ~ /^-[ \t]/
}

# Whether t starts with a mapping key; sets KEY and REST (the text after ": ").
function is_key(t,    q, end, c) {
    c = substr(t, 1, 1)
    if (c == "'" || c == "\"") {
        end = close_quote(t, 2, c)
        if (end == 0) return 0
        if (substr(t, end + 1, 1) != ":") return 0
        if (end + 1 < length(t) && substr(t, end + 2, 1) !~ /[ \t]/) return 0
        KEY = unquote(substr(t, 2, end - 2), c)
        REST = substr(t, end + 2)
        sub(/^[ \t]+/, "", REST)
        return 1
    }
    if (c == "#" || c == "{" || c == "[" || c == "|" || c == ">" || is_item(t)) return 0
    if (!match(t, /:([ \t]|$)/)) return 0
    KEY = substr(t, 1, RSTART - 1)
    sub(/[ \t]+$/, "", KEY)
    if (KEY ~ /[ \t]#/) return 0
    REST = substr(t, RSTART + 1)
    sub(/^[ \t]+/, "", REST)
    return 1
}

function join(parent, name) {
    return parent == "" ? name : parent "." name
}

function push(col, type, path) {
    depth++
    cind[depth] = col
    ctype[depth] = type
    cpath[depth] = path
    cn[depth] = 0
}

function node(col, t,    path, rest, rcol, k) {
    if (pend != "") {
        if (col > pend_col || (col == pend_col && pend_key && is_item(t))) {
            push(col, is_item(t) ? "seq" : "map", pend)
            pend = ""
        } else {
            set_value(pend, "")
            pend = ""
        }
    }
    while (depth > 0 && (cind[depth] > col || (cind[depth] == col && ctype[depth] == "seq" && !is_item(t))))
        depth--
    if (ctype[depth] == "seq") {
        if (!is_item(t)) return
        path = join(cpath[depth], cn[depth]++)
        N[file_role ":" cpath[depth]] = cn[depth]
        rest = substr(t, 2)
        match(rest, /^[ \t]*/)
        rcol = col + 1 + RLENGTH
        rest = substr(rest, RLENGTH + 1)
        if (rest == "" || rest ~ /^#/) {
            pend = path
            pend_col = col
            pend_key = 0
        } else if (is_item(rest)) {
            push(rcol, "seq", path)
            node(rcol, rest)
        } else if (is_key(rest)) {
            push(rcol, "map", path)
            node(rcol, rest)
        } else {
            value(path, rest, col)
        }
        return
    }
    if (depth == 0 && col == 0 && cpath[0] == "" && t ~ /^[{[]/) {
        flow(cpath[0], t)
        return
    }
    if (!is_key(t)) return
    k = KEY
    rest = REST
    path = join(cpath[depth], k)
    if (!((file_role ":" path) in seen_key)) {
        seen_key[file_role ":" path] = 1
        nkeys[file_role ":" cpath[depth]]++
        keys[file_role ":" cpath[depth], nkeys[file_role ":" cpath[depth]]] = k
    }
    if (rest == "" || rest ~ /^#/) {
        pend = path
        pend_col = col
        pend_key = 1
        return
    }
    value(path, rest, col)
}

# A value that starts on its key's (or its "- "'s) line, at indentation col.
function value(path, rest, col,    c, end, header) {
    if (rest ~ /^!!str[ \t]/) sub(/^!!str[ \t]+/, "", rest)
    c = substr(rest, 1, 1)
    if (c == "&" || c == "*" || c == "!") {
        warn(file_role_name() ": " path ": anchors, aliases and tags are not supported")
        set_value(path, "")
        return
    }
    if (c == "'" || c == "\"") {
        end = close_quote(rest, 2, c)
        if (end > 0) {
            set_value(path, unquote(substr(rest, 2, end - 2), c))
            return
        }
        mode = "quoted"
        q_path = path
        q_char = c
        q_text = substr(rest, 2)
        return
    }
    if (c == "|" || c == ">") {
        header = rest
        sub(/[ \t]+#.*$/, "", header)
        sub(/[ \t]+$/, "", header)
        if (header !~ /^[|>]([-+]?[1-9]?|[1-9][-+])$/) {
            warn(file_role_name() ": " path ": bad block scalar header " header)
            set_value(path, "")
            return
        }
        mode = "block"
        b_path = path
        b_fold = (c == ">")
        b_chomp = header ~ /-/ ? "strip" : (header ~ /\+/ ? "keep" : "clip")
        b_min = col
        b_ind = 0
        if (match(header, /[1-9]/)) b_ind = col + substr(header, RSTART, 1)
        b_n = 0
        return
    }
    if (c == "{" || c == "[") {
        flow(path, rest)
        return
    }
    set_value(path, plain(rest))
}

function plain(s) {
    sub(/[ \t]+#.*$/, "", s)
    sub(/[ \t]+$/, "", s)
    return s
}

function set_value(path, v,    k) {
    k = file_role ":" path
    if (!(k in V)) pair[++npairs] = k
    V[k] = v
}

# ---------------------------------------------------------------------------
# YAML, scalars

# The position of the quote that closes a scalar opened by q, searching s from i.
function close_quote(s, i, q,    c, n) {
    n = length(s)
    for (; i <= n; i++) {
        c = substr(s, i, 1)
        if (q == "\"" && c == "\\") { i++; continue }
        if (c == q) {
            if (q == "'" && substr(s, i + 1, 1) == "'") { i++; continue }
            return i
        }
    }
    return 0
}

function quoted_line(line,    end) {
    q_text = q_text "\n" line
    end = close_quote(line, 1, q_char)
    # the closing quote is searched in the new line only; an escape cannot span lines
    if (end == 0) return
    mode = ""
    set_value(q_path, unquote(substr(q_text, 1, length(q_text) - length(line) + end - 1), q_char))
}

function unquote(s, q) {
    s = fold_flow(s, q == "\"")
    if (q == "'") {
        gsub(/''/, "'", s)
        return s
    }
    return unescape(s)
}

# Line folding of a quoted scalar over several lines: a line break between two
# lines is a space, n empty lines between them are n line breaks; spaces around
# breaks go; in double quotes a "\" at the end of a line joins it to the next.
function fold_flow(s, dq,    n, L, i, k, j, r, esc) {
    n = split(s, L, "\n")
    if (n <= 1) return s
    for (i = 1; i <= n; i++) {
        esc[i] = 0
        if (i > 1) sub(/^[ \t]+/, "", L[i])
        if (i < n) {
            if (dq && match(L[i], /\\+$/) && RLENGTH % 2 == 1) {
                L[i] = substr(L[i], 1, length(L[i]) - 1)
                esc[i] = 1
            } else {
                sub(/[ \t]+$/, "", L[i])
            }
        }
    }
    r = L[1]
    i = 2
    while (i <= n) {
        if (esc[i - 1]) { r = r L[i]; i++; continue }
        k = 0
        while (i < n && L[i] == "") { k++; i++ }
        if (k == 0) r = r " " L[i]
        else {
            for (j = 0; j < k; j++) r = r "\n"
            r = r L[i]
        }
        i++
    }
    return r
}

function unescape(s,    r, i, c, h, n) {
    r = ""
    while ((i = index(s, "\\")) > 0) {
        r = r substr(s, 1, i - 1)
        c = substr(s, i + 1, 1)
        n = 2
        if (c == "n") r = r "\n"
        else if (c == "t" || c == "\t") r = r "\t"
        else if (c == "\\" || c == "\"" || c == "/" || c == " ") r = r c
        else if (c == "r") r = r "\r"
        else if (c == "a") r = r "\007"
        else if (c == "b") r = r "\010"
        else if (c == "v") r = r "\013"
        else if (c == "f") r = r "\014"
        else if (c == "e") r = r "\033"
        else if (c == "0") r = r ""
        else if (c == "N") r = r utf8(133)
        else if (c == "_") r = r utf8(160)
        else if (c == "L") r = r utf8(8232)
        else if (c == "P") r = r utf8(8233)
        else if (c == "x" || c == "u" || c == "U") {
            h = c == "x" ? 2 : (c == "u" ? 4 : 8)
            r = r utf8(hex(substr(s, i + 2, h)))
            n = 2 + h
        } else r = r "\\" c
        s = substr(s, i + n)
    }
    return r s
}

function hex(s,    v, i) {
    v = 0
    s = tolower(s)
    for (i = 1; i <= length(s); i++) v = v * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1
    return v
}

function utf8(c) {
    if (c < 128) return sprintf("%c", c)
    if (c < 2048) return sprintf("%c%c", 192 + int(c / 64), 128 + c % 64)
    if (c < 65536)
        return sprintf("%c%c%c", 224 + int(c / 4096), 128 + int(c / 64) % 64, 128 + c % 64)
    return sprintf("%c%c%c%c", 240 + int(c / 262144), 128 + int(c / 4096) % 64, \
        128 + int(c / 64) % 64, 128 + c % 64)
}

# A line while a block scalar (| or >) is open; 0 if it ends the scalar (the
# line is then read as usual).
function block_line(line,    lead) {
    if (line !~ /[^ \t]/) {
        b_line[++b_n] = substr(line, b_ind + 1)
        if (b_ind == 0 || length(line) <= b_ind) b_line[b_n] = ""
        return 1
    }
    match(line, /^ */)
    lead = RLENGTH
    if (b_ind == 0) {
        if (lead <= b_min) { end_block(); return 0 }
        b_ind = lead
    }
    if (lead < b_ind) { end_block(); return 0 }
    b_line[++b_n] = substr(line, b_ind + 1)
    return 1
}

function end_block(    n, i, r, k, trail, more, prev_more) {
    mode = ""
    n = b_n
    trail = 0
    while (n > 0 && b_line[n] == "") { n--; trail++ }
    r = ""
    if (!b_fold) {
        for (i = 1; i <= n; i++) r = r (i > 1 ? "\n" : "") b_line[i]
    } else {
        prev_more = 0
        k = 0
        for (i = 1; i <= n; i++) {
            if (b_line[i] == "") { k++; continue }
            more = b_line[i] ~ /^[ \t]/
            if (i == 1) r = b_line[i]
            else if (k == 0 && !more && !prev_more) r = r " " b_line[i]
            else {
                if (more || prev_more) r = r "\n"
                for (; k > 0; k--) r = r "\n"
                r = r b_line[i]
            }
            k = 0
            prev_more = more
        }
    }
    if (n > 0 && b_chomp != "strip") r = r "\n"
    if (b_chomp == "keep") for (i = 0; i < trail; i++) r = r "\n"
    set_value(b_path, r)
}

# ---------------------------------------------------------------------------
# YAML, flow collections on one line: {a: b, c: [d, 'e']}

function flow(path, s,    ok) {
    f_s = s
    f_i = 1
    ok = flow_node(path)
    f_skip()
    if (!ok || (f_i <= length(f_s) && substr(f_s, f_i, 1) != "#")) {
        warn(file_role_name() ": " path ": unsupported flow collection: " s)
    }
}

function f_skip() {
    while (f_i <= length(f_s) && substr(f_s, f_i, 1) ~ /[ \t]/) f_i++
}

function f_scalar(stop,    c, end, start, v) {
    f_skip()
    c = substr(f_s, f_i, 1)
    if (c == "'" || c == "\"") {
        end = close_quote(f_s, f_i + 1, c)
        if (end == 0) { f_i = length(f_s) + 1; return "" }
        v = unquote(substr(f_s, f_i + 1, end - f_i - 1), c)
        f_i = end + 1
        return v
    }
    start = f_i
    while (f_i <= length(f_s)) {
        c = substr(f_s, f_i, 1)
        if (index(stop, c)) break
        if (c == ":" && substr(f_s, f_i + 1, 1) ~ /[ \t,\]}]|^$/) break
        f_i++
    }
    v = substr(f_s, start, f_i - start)
    sub(/[ \t]+$/, "", v)
    return v
}

function flow_node(path,    c) {
    f_skip()
    c = substr(f_s, f_i, 1)
    if (c == "{") return flow_map(path)
    if (c == "[") return flow_seq(path)
    set_value(path, f_scalar(",]}"))
    return 1
}

function flow_map(path,    k, c, child) {
    f_i++
    f_skip()
    if (substr(f_s, f_i, 1) == "}") { f_i++; return 1 }
    while (f_i <= length(f_s)) {
        k = f_scalar(",:}")
        child = join(path, k)
        if (!((file_role ":" child) in seen_key)) {
            seen_key[file_role ":" child] = 1
            nkeys[file_role ":" path]++
            keys[file_role ":" path, nkeys[file_role ":" path]] = k
        }
        f_skip()
        c = substr(f_s, f_i, 1)
        if (c == ":") {
            f_i++
            if (!flow_node(child)) return 0
        } else set_value(child, "")
        f_skip()
        c = substr(f_s, f_i, 1)
        f_i++
        if (c == "}") return 1
        if (c != ",") return 0
        f_skip()
        if (substr(f_s, f_i, 1) == "}") { f_i++; return 1 }
    }
    return 0
}

function flow_seq(path,    n, c) {
    f_i++
    n = 0
    N[file_role ":" path] = 0
    f_skip()
    if (substr(f_s, f_i, 1) == "]") { f_i++; return 1 }
    while (f_i <= length(f_s)) {
        if (!flow_node(join(path, n))) return 0
        N[file_role ":" path] = ++n
        f_skip()
        c = substr(f_s, f_i, 1)
        f_i++
        if (c == "]") return 1
        if (c != ",") return 0
        f_skip()
        if (substr(f_s, f_i, 1) == "]") { f_i++; return 1 }
    }
    return 0
}

# ---------------------------------------------------------------------------
# Reading the parsed values

function has(k) {
    return (k in V) || (k in N) || (k in nkeys)
}

function get(k) {
    return (k in V) ? V[k] : ""
}

function is_true(v) {
    return v ~ /^(true|True|TRUE|yes|Yes|YES|on|On|ON)$/
}

# The strings of a sequence, a mapping's values or a single string at k, into
# list[1..]; returns their number.
function strings(k, list,    n, i, count) {
    n = 0
    if (k in N) {
        for (i = 0; i < N[k]; i++) if ((k "." i) in V) list[++n] = V[k "." i]
    } else if (k in nkeys) {
        count = nkeys[k]
        for (i = 1; i <= count; i++) if ((k "." keys[k, i]) in V) list[++n] = V[k "." keys[k, i]]
    } else if ((k in V) && V[k] != "") list[++n] = V[k]
    return n
}

function sq(s) {
    gsub(/'/, "'\\''", s)
    return "'" s "'"
}

# ---------------------------------------------------------------------------
# Acting on them

function act(    iid, h, i, k, n, list, summary) {
    iid = get("meta:instance-id")
    if (iid == "") {
        warn("meta-data has no instance-id; using iid-corral-nocloud")
        iid = "iid-corral-nocloud"
    }
    gsub(/[\n\r]/, " ", iid)
    new_instance = (iid != old_id)

    if (user_kind == "ignored") warn("user-data is neither #cloud-config nor a #! script: ignored")
    if (user_kind == "cloud-config") {
        n = nkeys["user:"]
        unsupported = ""
        for (i = 1; i <= n; i++) {
            k = keys["user:", i]
            if (k !~ /^(hostname|ssh_authorized_keys|runcmd|write_files)$/) unsupported = unsupported " " k
        }
        if (unsupported != "") warn("user-data: not supported here, ignored:" unsupported)
    }

    h = set_hostname()
    keys_added = 0
    files = 0
    scripts = ""
    if (new_instance) {
        add_keys()
        if (user_kind == "cloud-config") {
            write_files()
            runcmd()
        }
        if (user_kind == "script") user_script()
        if (scripts != "") {
            printf "%s\n", substr(scripts, 2) > (out "/final")
            close(out "/final")
        }
    }
    network()

    e = out "/env"
    printf "instance_id=%s\n", sq(iid) > e
    printf "new_instance=%d\n", new_instance > e
    printf "hostname=%s\n", sq(h) > e
    printf "keys_added=%d\n", keys_added > e
    printf "files=%d\n", files > e
    printf "scripts=%s\n", sq(substr(scripts, 2)) > e
    printf "userdata=%s\n", user_kind > e
    printf "network=%s\n", net_kind > e
    close(e)
    for (i = 1; i <= nwarn; i++) print warning[i] > (out "/warnings")
    close(out "/warnings")
}

function read_file(path, lines,    n, l) {
    n = 0
    while ((getline l < path) > 0) lines[++n] = l
    close(path)
    return n
}

function set_hostname(    h, fqdn, old, lines, n, i, text, changed, want, found) {
    fqdn = get("user:hostname")
    if (fqdn == "") fqdn = get("meta:local-hostname")
    if (fqdn != "" && (length(fqdn) > 253 || fqdn !~ /^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$/)) {
        warn("ignored an invalid host name: " fqdn)
        fqdn = ""
    }
    old = ""
    if ((getline old < (root "/etc/hostname")) <= 0) old = ""
    close(root "/etc/hostname")
    if (fqdn == "") fqdn = old
    if (fqdn == "") fqdn = "localhost"
    h = fqdn
    sub(/\..*/, "", h)
    h = substr(h, 1, 63)
    printf "%s\n", h > (root "/proc/sys/kernel/hostname")
    close(root "/proc/sys/kernel/hostname")
    if (h != old) {
        printf "%s\n", h > (root "/etc/hostname")
        close(root "/etc/hostname")
    }
    n = read_file(root "/etc/hosts", lines)
    text = ""
    changed = 0
    want = "127.0.1.1\t" (fqdn != h ? fqdn " " h : h)
    found = 0
    for (i = 1; i <= n; i++) {
        if (lines[i] ~ /^127\.0\.1\.1[ \t]/) {
            found = 1
            if (lines[i] != want) { lines[i] = want; changed = 1 }
        }
        text = text lines[i] "\n"
    }
    if (!found) { text = text want "\n"; changed = 1 }
    if (changed) {
        printf "%s", text > (root "/etc/hosts")
        close(root "/etc/hosts")
    }
    return h
}

function add_keys(    f, old, n, i, meta, user, have) {
    f = root "/root/.ssh/authorized_keys"
    n = read_file(f, old)
    for (i = 1; i <= n; i++) have[old[i]] = 1
    n = strings("meta:public-keys", meta)
    add_key_list(f, meta, n, have)
    n = strings("user:ssh_authorized_keys", user)
    add_key_list(f, user, n, have)
    close(f)
}

function add_key_list(f, list, n, have,    i, k) {
    for (i = 1; i <= n; i++) {
        k = list[i]
        sub(/^[ \t]+/, "", k)
        sub(/[ \t\n]+$/, "", k)
        if (k == "" || k ~ /\n/ || (k in have)) continue
        have[k] = 1
        print k >> f
        keys_added++
    }
}

# write_files: the shell script run/corral-nocloud/write-files, so that a path
# that cannot be written is an error message, not the end of this program.
function write_files(    s, n, i, p, path, content, enc, perms, app, owner, dir, text) {
    s = out "/write-files"
    n = N["user:write_files"]
    text = ""
    for (i = 0; i < n; i++) {
        p = "user:write_files." i
        path = get(p ".path")
        if (path !~ /^\//) {
            warn("write_files: item " i " has no absolute path: skipped")
            continue
        }
        content = get(p ".content")
        enc = tolower(get(p ".encoding"))
        perms = get(p ".permissions")
        if (perms == "") perms = "0644"
        app = is_true(get(p ".append"))
        owner = get(p ".owner")
        if (owner != "" && owner !~ /^root(:root)?$/) warn("write_files: " path ": owner " owner " not supported, root's")
        if (perms !~ /^0?[0-7]?[0-7][0-7][0-7]$/) {
            warn("write_files: " path ": bad permissions " perms ": skipped")
            continue
        }
        path = root path
        dir = path
        sub(/\/[^\/]*$/, "", dir)
        if (dir == "") dir = "/"
        text = text "[ -d " sq(dir) " ] || mkdir -p " sq(dir) " || fail=1\n"
        if (enc == "" || enc == "text/plain") {
            text = text "printf '%s' " sq(content) (app ? " >> " : " > ") sq(path)
        } else if (enc ~ /^(b64|base64)$/) {
            text = text "printf '%s' " sq(content) " | base64 -d" (app ? " >> " : " > ") sq(path)
        } else if (enc ~ /^(gz|gzip)\+(b64|base64)$/) {
            text = text "printf '%s' " sq(content) " | base64 -d | gunzip" (app ? " >> " : " > ") sq(path)
        } else {
            warn("write_files: " path ": encoding " enc " not supported: skipped")
            continue
        }
        text = text " && chmod " perms " " sq(path) " || { echo \"write_files: cannot write \"" sq(path) "; fail=1; }\n"
        files++
    }
    if (files) {
        printf "fail=0\n%sexit $fail\n", text > s
        close(s)
    }
}

function runcmd(    f, n, i, k, j, m, cmd, list) {
    k = "user:runcmd"
    if (!(k in N) && !((k in V) && V[k] != "")) return
    f = root "/var/lib/cloud/scripts/runcmd"
    printf "#!/bin/sh\n" > f
    n = (k in N) ? N[k] : 0
    if (!(k in N)) printf "%s\n", V[k] > f
    for (i = 0; i < n; i++) {
        if ((k "." i) in N) {
            cmd = ""
            m = N[k "." i]
            for (j = 0; j < m; j++) cmd = cmd (j ? " " : "") sq(get(k "." i "." j))
            printf "%s\n", cmd > f
        } else printf "%s\n", get(k "." i) > f
    }
    close(f)
    scripts = scripts " runcmd"
}

function user_script(    f, i) {
    f = root "/var/lib/cloud/scripts/user-data"
    printf "" > f
    for (i = 1; i <= nscript; i++) printf "%s\n", script_lines[i] > f
    close(f)
    scripts = " user-data" scripts
}

function network(    f, p, n, i, id, q, mac, name, setname, dhcp, v, addrs, gw, dns, search, list, k, j, a) {
    f = out "/net"
    printf "" > f
    if (!has("net:version") && !has("net:network") && !has("net:config")) {
        net_kind = "fallback"
        close(f)
        return
    }
    p = has("net:network") ? "net:network." : "net:"
    v = get(p "version")
    if (get(p "config") == "disabled") {
        net_kind = "disabled"
    } else if (v != "2") {
        warn("network-config version " v " is not supported (only 2): DHCP on eth0")
        net_kind = "fallback"
    } else {
        net_kind = "v2"
        n = nkeys[p "ethernets"]
        for (i = 1; i <= n; i++) {
            id = keys[p "ethernets", i]
            q = p "ethernets." id
            mac = tolower(get(q ".match.macaddress"))
            name = get(q ".match.name")
            setname = get(q ".set-name")
            dhcp = is_true(get(q ".dhcp4")) ? 1 : 0
            addrs = ""
            k = strings(q ".addresses", list)
            for (j = 1; j <= k; j++) {
                a = list[j]
                if (a ~ /^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+\/[0-9]+$/ && a !~ /\/(3[3-9]|[4-9][0-9])$/) {
                    addrs = addrs "," a "/" netmask(substr(a, index(a, "/") + 1))
                } else warn("network-config: " id ": address " a " is not supported (IPv4 a.b.c.d/n only)")
            }
            gw = get(q ".gateway4")
            for (j = 0; j < N[q ".routes"]; j++) {
                if (get(q ".routes." j ".to") ~ /^(default|0\.0\.0\.0\/0)$/) gw = get(q ".routes." j ".via")
                else warn("network-config: " id ": only default routes are supported")
            }
            dns = join_strings(q ".nameservers.addresses")
            search = join_strings(q ".nameservers.search")
            if ((id mac name setname gw dns search) ~ /[ \t]/) {
                warn("network-config: " id ": names with spaces are not supported")
                continue
            }
            printf "%s %s %s %s %d %s %s %s %s\n", id, dash(mac), dash(name), dash(setname), dhcp, \
                dash(substr(addrs, 2)), dash(gw), dash(dns), dash(search) > f
        }
        if (has(p "bonds") || has(p "bridges") || has(p "vlans") || has(p "wifis"))
            warn("network-config: only ethernets are supported")
    }
    close(f)
}

function dash(s) {
    return s == "" ? "-" : s
}

function join_strings(k,    list, n, i, r) {
    n = strings(k, list)
    r = ""
    for (i = 1; i <= n; i++) r = r (i > 1 ? "," : "") list[i]
    return r
}

# The dotted netmask of a prefix length (24 -> 255.255.255.0).
function netmask(bits,    r, i, b, octet) {
    split("0 128 192 224 240 248 252 254 255", octet, " ")
    r = ""
    for (i = 0; i < 4; i++) {
        b = bits - 8 * i
        b = b > 8 ? 8 : (b < 0 ? 0 : b)
        r = r (i ? "." : "") octet[b + 1]
    }
    return r
}
