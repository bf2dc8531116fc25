"""The images, run on a real engine (podman): the engine wrapper, image builds keyed by their content,
and the stand-in base images used where no registry can be reached. docs/deployment.md tells how."""
