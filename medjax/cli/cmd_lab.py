"""``medjax lab``: JupyterLab on the notebooks folder, on 127.0.0.1 with a fresh token."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "lab",
        help="start JupyterLab on the notebooks (127.0.0.1, random token)",
        description="Start JupyterLab in the notebooks folder, listening on 127.0.0.1 with a fresh random token, "
                    "and print the URL to open. Other addresses (0.0.0.0, a network interface) are refused "
                    "unless --allow-remote is given. Ctrl-C stops the server.",
    )
    p.add_argument("--notebooks", default="notebooks", metavar="DIR",
                   help="folder to serve (default: notebooks)")
    p.add_argument("--port", type=int, default=0, help="port to listen on (default 0: any free port)")
    p.add_argument("--ip", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --ip such as 0.0.0.0 (anyone reaching it with the token runs code)")
    p.add_argument("--no-browser", action="store_true", help="do not open a web browser")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from medjax.lab import check_ip, start_lab

    check_ip(args.ip, args.allow_remote)
    if args.allow_remote:
        print(f"medjax lab: listening on {args.ip}: anyone who can reach this address and has the token can run "
              "code as you", file=sys.stderr)
    server = start_lab(args.notebooks, port=args.port, ip=args.ip, allow_remote=args.allow_remote,
                       open_browser=not args.no_browser)
    print(f"JupyterLab is running in {args.notebooks}\n  {server.url}\n"
          f"server log: {server.log_path}\nCtrl-C stops it.", flush=True)
    try:
        return int(server.process.wait() or 0)
    except KeyboardInterrupt:
        server.stop()
        return 0
    finally:
        server.stop()
