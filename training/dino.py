"""dino pre-training: `accelerate launch training/dino.py --help` lists every flag."""
from simwnw_hf.train import main

if __name__ == "__main__":
    main(framework="dino")
