# Flags let-chains (`if let P = e && c`, stable only since Rust 1.88), which rustc 1.95 accepts
# silently in edition 2024 while the crate's rust-version is 1.85. A chain starts on an
# `if let`/`while let` line and has a `&&` before the block's opening brace, on that line or on
# the continuation lines rustfmt puts it on.
/^[[:space:]]*(\}[[:space:]]*else[[:space:]]+)?(if|while)[[:space:]]+let[[:space:]]/ {
    open = 1
}
open {
    head = $0
    brace = index(head, "{")
    if (brace > 0) head = substr(head, 1, brace - 1)
    if (head ~ /&&/) {
        print FILENAME ":" FNR ": " $0
        found = 1
    }
    if (brace > 0) open = 0
}
END { exit found }
