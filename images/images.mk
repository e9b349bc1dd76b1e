# Notebook and hub images. Included from the main Makefile (`include images/images.mk`); paths are relative
# to the repository root.
#
#   make images                       build every image (needs a reachable Docker engine; else says so, exit 0)
#   make image-spark                  build one: image-minimal, image-scikit-learn, image-spark,
#                                     image-tensorflow-gpu, image-hub
#   make images-push                  push them (after `docker login`)
#   make image-tags IMAGE_TAG=2026.12 write the tag into esker.yaml and helm/esker/values.yaml
#
# IMAGE_TAG defaults to the tag esker.yaml uses now; IMAGE_REGISTRY to quay.io/esker.

IMAGES_PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
DOCKER ?= docker
DOCKER_BUILD_FLAGS ?=
IMAGE_REGISTRY ?= quay.io/esker
IMAGE_TAG ?= $(shell $(IMAGES_PYTHON) tools/image_tags.py --current 2>/dev/null || echo dev)
NOTEBOOK_IMAGES := minimal scikit-learn spark tensorflow-gpu
ALL_IMAGES := $(NOTEBOOK_IMAGES) hub

# images/<dir> -> repository name (tools/image_tags.py has the same table).
image_repo = $(IMAGE_REGISTRY)/$(if $(filter hub,$(1)),hub,$(1)-notebook)

# Exit 0 with a message when no engine answers: building images is optional on a development machine.
define images_need_docker
if ! command -v $(DOCKER) >/dev/null 2>&1; then \
  echo "images: '$(DOCKER)' is not installed here: skipping the image builds (nothing built)."; \
  echo "        Run 'make images' where a Docker engine is reachable."; exit 0; \
fi; \
if ! $(DOCKER) info >/dev/null 2>&1; then \
  echo "images: no Docker engine is reachable ('$(DOCKER) info' failed): skipping the image builds (nothing built)."; \
  echo "        Start the engine or set DOCKER_HOST, then run 'make images' again."; exit 0; \
fi
endef

.PHONY: images images-push image-tags $(addprefix image-,$(ALL_IMAGES))

images:
	@$(images_need_docker); \
	set -e; \
	for name in $(ALL_IMAGES); do $(MAKE) --no-print-directory -f $(firstword $(MAKEFILE_LIST)) image-$$name; done; \
	echo "images: built $(ALL_IMAGES) as $(IMAGE_REGISTRY)/...:$(IMAGE_TAG)"

# Notebook images build from images/ (each needs its own folder and esker-client/); the hub from the root.
$(addprefix image-,$(NOTEBOOK_IMAGES)): image-%:
	@$(images_need_docker); \
	echo "==> $(call image_repo,$*):$(IMAGE_TAG)"; \
	$(DOCKER) build $(DOCKER_BUILD_FLAGS) -f images/$*/Dockerfile -t $(call image_repo,$*):$(IMAGE_TAG) images

image-hub:
	@$(images_need_docker); \
	echo "==> $(call image_repo,hub):$(IMAGE_TAG)"; \
	DOCKER_BUILDKIT=1 $(DOCKER) build $(DOCKER_BUILD_FLAGS) -f images/hub/Dockerfile -t $(call image_repo,hub):$(IMAGE_TAG) .

images-push:
	@$(images_need_docker); \
	set -e; \
	for name in $(ALL_IMAGES); do \
	  ref="$(IMAGE_REGISTRY)/$$( [ $$name = hub ] && echo hub || echo $$name-notebook ):$(IMAGE_TAG)"; \
	  echo "==> push $$ref"; $(DOCKER) push "$$ref"; \
	done

image-tags:
	$(IMAGES_PYTHON) tools/image_tags.py $(IMAGE_TAG) --registry $(IMAGE_REGISTRY)
