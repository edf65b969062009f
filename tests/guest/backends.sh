# shellcheck shell=bash
# Named virtio-fs backends for the guest suite. A backend is a command template whose words may
# hold {sock} (the vhost-user socket to listen on), {dir} (the shared directory) and {cache}
# (auto|always|never|metadata); run.sh substitutes them.

guest_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(cd "$guest_dir/../.." && pwd)

# backend_template NAME: prints the template of a named backend, one word per line.
backend_template() {
    case $1 in
        zerodax)
            printf '%s\n' "${ZERODAX:-$repo_dir/target/release/zerodax}" serve \
                --socket-path '{sock}' --shared-dir '{dir}' --cache '{cache}'
            ;;
        zerodax-handles)
            # zerodax with the flags that change how nodes, set-id bits and xattrs are
            # served: inodes by file handle, FUSE_HANDLE_KILLPRIV_V2, xattrs on.
            backend_template zerodax
            printf '%s\n' --inode-file-handles=mandatory --killpriv-v2 --xattr
            ;;
        c-virtiofsd)
            # QEMU 7.2's C daemon spells the cache modes none|auto|always (run.sh maps never).
            printf '%s\n' "${C_VIRTIOFSD:-/usr/lib/qemu/virtiofsd}" '--socket-path={sock}' \
                -o 'source={dir}' -o 'cache={cache}'
            ;;
        rust-virtiofsd)
            printf '%s\n' "${VIRTIOFSD:-$(command -v virtiofsd || echo "${CARGO_HOME:-$HOME/.cargo}/bin/virtiofsd")}" \
                '--socket-path={sock}' '--shared-dir={dir}' '--cache={cache}'
            ;;
        *) return 1 ;;
    esac
}

backend_names() { echo "zerodax zerodax-handles c-virtiofsd rust-virtiofsd"; }
