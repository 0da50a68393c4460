"""byol pre-training: `accelerate launch training/byol.py --help` lists every flag."""
from simwnw_hf.train import main

if __name__ == "__main__":
    main(framework="byol")
