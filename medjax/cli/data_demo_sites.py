"""``medjax data demo-sites DEMO_DIR OUT``: split the demo set into simulated hospital sites (federated training)."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo-sites",
        help="split a demo dataset into site folders that differ like hospitals (for federated training)",
        description=(
            "Split an MSD-layout demo folder into OUT/site-1 ... OUT/site-N, each in the demo layout plus a "
            "site.json manifest, so any preset trains on one site with --set data.dir=OUT/site-k. 'by-site': "
            "sites differ in case mix (lesion burden), scanner intensity scale/offset and bias field, voxel "
            "spacing and stored orientation (world positions kept). 'iid': random equal parts, volumes unchanged."
        ),
    )
    p.add_argument("demo", metavar="DEMO_DIR", help="demo folder with dataset.json (from `medjax data demo`)")
    p.add_argument("out", metavar="OUT", help="output folder for site-1 ... site-N")
    p.add_argument("--sites", type=int, default=3, help="number of sites (default 3)")
    p.add_argument("--partition", choices=("by-site", "iid"), default="by-site",
                   help="by-site: sites differ like hospitals (default); iid: random equal split")
    p.add_argument("--seed", type=int, default=0, help="split seed; same seed, same files (default 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    import time

    from medjax.data.demo_sites import split_demo_sites, summarize_sites

    start = time.perf_counter()
    split_demo_sites(args.demo, args.out, args.sites, args.partition, args.seed)
    seconds = time.perf_counter() - start
    print(f"split {args.demo} into {args.sites} sites ({args.partition}, seed {args.seed}) in {seconds:.1f} s")
    for s in summarize_sites(args.out):
        line = f"  {s['site']:<8} {len(s['subjects'])} subjects, {s['lesions']} lesions in {s['lesion_subjects']}"
        sc = s.get("scanner")
        if sc:
            spacing = "x".join(f"{v:g}" for v in sc["spacing_mm"])
            line += (f"; {sc['orientation']} {spacing} mm, intensity x{sc['intensity_scale']:g} "
                     f"+{sc['intensity_offset']:g}, bias {sc['bias_amplitude']:g}")
        print(line)
    print(f"  train on one site with --set data.dir={args.out}/site-1")
    return 0
