"""Publish a trained encoder: ``python hub_upload.py RUN_DIR --repo-id ORG/NAME [--dry-run]``.

RUN_DIR is a training output dir (exported on the fly: model.safetensors + config.json + README.md)
or a folder already made by ``simwnw_hf.hub.export_run``. Validation runs before anything is sent.
The token comes from HF_TOKEN or ``hf auth login``; the endpoint from HF_ENDPOINT.
"""

import argparse
import shlex
import sys

from simwnw_hf.hub.upload import HubUploadError, upload


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="training run dir or exported folder")
    parser.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--dry-run", action="store_true", help="export and validate only; contact nobody")
    parser.add_argument("--revision", default=None, help="branch to upload to (created if missing)")
    parser.add_argument("--commit-message", default=None)
    parser.add_argument("--force", action="store_true", help="replace weights already in the repo / --export-dir")
    parser.add_argument("--checkpoint", default=None, help="step or checkpoint-<step> (default: newest)")
    parser.add_argument("--baseline-run", default=None, help="dense run dir for the card's comparison table")
    parser.add_argument("--export-dir", default=None, help="keep the exported folder here")
    args = parser.parse_args(argv)
    try:
        result = upload(args.run_dir, args.repo_id, private=args.private, dry_run=args.dry_run,
                        revision=args.revision, commit_message=args.commit_message, force=args.force,
                        checkpoint=args.checkpoint, baseline_run=args.baseline_run, export_dir=args.export_dir,
                        publish_command="python hub_upload.py " + shlex.join(sys.argv[1:] if argv is None else argv))
    except HubUploadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    files = ", ".join(f"{name} ({size / 1e6:.2f} MB)" for name, size in result.files.items())
    if not result.uploaded:
        print(f"dry run: validated {files}; would upload to {result.endpoint}/{args.repo_id}")
    else:
        print(f"uploaded {files} to {args.repo_id}: {result.commit_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
