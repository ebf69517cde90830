import sys
from pathlib import Path

# the project runs pytest with --import-mode=importlib, which does not put test folders on sys.path
sys.path.insert(0, str(Path(__file__).parent))
