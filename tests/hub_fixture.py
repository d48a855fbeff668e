"""A repository of the small bundled models on the stand-in hub (tests/hub-server.py), for the
download tests of the programs that load models by repo id (moshi-server, moshi-webrtc)."""
import os
import shutil
import subprocess
import sys

REPO = "test/moshi"
# the released repos' file names (what the programs look for), from the bundled small models
FILES = (("model.safetensors", os.path.join("lm", "dialog", "model.safetensors")),
         ("tokenizer-e351c8d8-checkpoint125.safetensors",
          os.path.join("mimi", "small", "model.safetensors")),
         ("tokenizer_spm_32k_3.model", os.path.join("tokenizer", "tiny.model")))
# the lines a download prints, once per weights file, with --progress
DOWNLOADED = tuple(f"downloaded {name} from {REPO}" for name, _ in FILES[:2])


class Hub:
    """Serves REPO from root (created) until stop()."""

    def __init__(self, root, data_dir, hub_server):
        self.root = root
        repo = os.path.join(root, "repos", *REPO.split("/"))
        os.makedirs(os.path.join(repo, "files"))
        with open(os.path.join(repo, "commit"), "w") as f:
            f.write("0" * 40)
        for name, src in FILES:
            shutil.copyfile(os.path.join(data_dir, src), os.path.join(repo, "files", name))
        self.proc = subprocess.Popen([sys.executable, hub_server, root], stdout=subprocess.PIPE,
                                     text=True)
        self.port = self.proc.stdout.readline().strip()

    def env(self, cache):
        """The environment of a program that downloads from this hub into a cache of its own."""
        env = dict(os.environ, HF_ENDPOINT=f"http://127.0.0.1:{self.port}",
                   HF_HUB_CACHE=os.path.join(self.root, cache),
                   HF_HOME=os.path.join(self.root, "home"))
        env.pop("HF_HUB_OFFLINE", None)
        env.pop("HF_TOKEN", None)
        return env

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
