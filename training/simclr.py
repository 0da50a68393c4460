"""simclr pre-training: `accelerate launch training/simclr.py --help` lists every flag."""
from simwnw_hf.train import main

if __name__ == "__main__":
    main(framework="simclr")
