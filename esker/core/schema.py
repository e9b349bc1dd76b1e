"""The schema of esker.yaml: strict (unknown keys are errors), with the defaults a quick start needs.

Every field has a description: the configuration reference (docs/configuration.md) is generated from it.
"""

from __future__ import annotations

SIZE = {
    "type": "string",
    "pattern": r"^[0-9]+(\.[0-9]+)?\s*([KMGTP]i?|[kmgtp])?[Bb]?$",
    "description": "A size such as 512M, 4G or 20Gi (powers of 1024).",
}
SLUG = {"type": "string", "pattern": r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$",
        "description": "lowercase letters, digits and inner dashes, at most 40 characters"}
GROUPS = {
    "type": "array",
    "items": {"type": "string", "minLength": 1},
    "uniqueItems": True,
    "description": "JupyterHub groups allowed to use this. Empty: everyone. Admins are always allowed.",
}
PORT = {"type": "integer", "minimum": 0, "maximum": 65535}

# What a choice inside a profile option may change on the launch plan (KubeSpawner's
# `kubespawner_override`, restricted to fields both backends understand).
OVERRIDE = {
    "type": "object",
    "additionalProperties": False,
    "description": "Plan fields this choice sets.",
    "properties": {
        "gpus": {"type": "integer", "minimum": 0, "maximum": 16, "description": "GPUs for the server."},
        "gpu_type": {"type": "string", "minLength": 1, "description": "A key of gpus.types."},
        "cpu_limit": {"type": "number", "exclusiveMinimum": 0, "description": "CPU cores."},
        "mem_limit": SIZE,
        "scratch_size": SIZE,
        "image": {"type": "string", "minLength": 1, "description": "Container image (Kubernetes)."},
        "environment": {"type": "string", "minLength": 1, "description": "Local environment (embedded)."},
    },
}

GPU_POLICY = {
    "type": "object",
    "additionalProperties": False,
    "description": "What happens to a server holding GPUs (servers without GPUs are never affected).",
    "properties": {
        "idle_timeout": {"type": "integer", "minimum": 0,
                         "description": "Seconds a server's GPUs may stay idle (utilisation 0 and no compute "
                                        "process on any of them) before the server is stopped, with a warning in "
                                        "the hub's log and on the user's next spawn page. 0: never."},
        "max_runtime": {"type": "integer", "minimum": 0,
                        "description": "Seconds a server holding GPUs may run at most, busy or not (events where "
                                       "40-50 people share a few GPUs). 0: no limit."},
    },
}

CHOICE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["display_name"],
    "properties": {
        "display_name": {"type": "string", "minLength": 1},
        "description": {"type": "string"},
        "default": {"type": "boolean", "default": False},
        "groups": GROUPS,
        "override": OVERRIDE,
    },
}

OPTION = {
    "type": "object",
    "additionalProperties": False,
    "required": ["display_name", "choices"],
    "properties": {
        "display_name": {"type": "string", "minLength": 1},
        "choices": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": r"^[A-Za-z0-9_.-]{1,40}$"},
            "additionalProperties": CHOICE,
        },
    },
}

PROFILE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["slug", "display_name", "image", "environment"],
    "properties": {
        "slug": {**SLUG, "description": "Stable identifier used by the form and the REST API: " + SLUG["description"] + "."},
        "display_name": {"type": "string", "minLength": 1},
        "description": {"type": "string", "default": ""},
        "default": {"type": "boolean", "default": False, "description": "Preselected on the spawn page."},
        "image": {"type": "string", "minLength": 1, "description": "Container image used on Kubernetes."},
        "environment": {
            "type": "string",
            "pattern": r"^[a-z0-9][a-z0-9-]*$",
            "description": "Folder under images/ whose requirements.lock is the local environment (embedded).",
        },
        "groups": GROUPS,
        "cpu_limit": {"type": "number", "exclusiveMinimum": 0, "default": 1, "description": "CPU cores."},
        "mem_limit": {**SIZE, "default": "2G"},
        "scratch_size": {**SIZE, "default": "10G", "description": "Per-user scratch quota."},
        "scratch_keep": {
            "type": "boolean",
            "default": False,
            "description": "Keep the scratch directory when the server stops (otherwise it is wiped).",
        },
        "gpus": {"type": "integer", "minimum": 0, "maximum": 16, "default": 0, "description": "Default GPU count."},
        "gpu_type": {"type": ["string", "null"], "default": None,
                     "description": "A key of gpus.types: servers of this profile get GPUs of that type only."},
        "gpu_policy": {**GPU_POLICY, "default": {},
                       "description": "This profile's GPU policy; a field left out takes gpus.policy's."},
        "spark": {"type": "boolean", "default": False, "description": "Inject the Spark master and defaults."},
        "storage": {
            "enum": ["optional", "required", "none"],
            "default": "optional",
            "description": "S3 credentials: required refuses the spawn when object storage is down.",
        },
        "options": {
            "type": "object",
            "propertyNames": {"pattern": r"^[a-z][a-z0-9_]{0,30}$", "not": {"const": "profile"}},
            "additionalProperties": OPTION,
            "default": {},
            "description": "Choices offered on the spawn page (KubeSpawner profile_options).",
        },
    },
}

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "esker.yaml",
    "type": "object",
    "additionalProperties": False,
    "required": ["profiles"],
    "properties": {
        "hub": {
            "type": "object",
            "additionalProperties": False,
            "default": {},
            "description": "Where and how the hub listens.",
            "properties": {
                "ip": {
                    "type": "string",
                    "default": "127.0.0.1",
                    "description": "Address the proxy listens on. Loopback unless you mean to expose the hub.",
                },
                "port": {**PORT, "default": 8000, "description": "Public port of the proxy (ESKER_PORT overrides)."},
                "hub_port": {**PORT, "default": 0, "description": "Hub API port (0: pick a free one)."},
                "proxy_api_port": {**PORT, "default": 0, "description": "Proxy API port (0: pick a free one)."},
                "base_url": {"type": "string", "default": "/", "pattern": "^/", "description": "URL prefix of the hub, e.g. /esker/."},
                "mode": {"enum": ["embedded", "kubernetes"], "default": "embedded",
                         "description": "Which backend this file is for: embedded (`esker run`, one machine) or "
                         "kubernetes (the Helm chart sets it in the ConfigMap it renders). Checks that depend on "
                         "the backend follow it: on kubernetes a course's content.path is refused."},
                "admin_users": {
                    "type": "array",
                    "items": {"type": "string"},
                    "default": ["admin"],
                    "description": "Users with admin rights.",
                },
                "concurrent_spawn_limit": {"type": "integer", "minimum": 1, "default": 50,
                                           "description": "Spawns in flight at once; more get a clear retry-later message."},
                "start_timeout": {"type": "integer", "minimum": 10, "default": 300,
                                  "description": "Seconds a server may take to start (first spawn may build its environment)."},
                "log_level": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR"], "default": "INFO", "description": "Hub log level."},
            },
        },
        "auth": {
            "type": "object",
            "additionalProperties": False,
            "default": {},
            "description": "How people log in.",
            "properties": {
                "type": {
                    "enum": ["shared-password", "oauth", "dummy"],
                    "default": "shared-password",
                    "description": "shared-password (generated on first run), oauth (GenericOAuthenticator), "
                    "or dummy (any password; tests only).",
                },
                "allow_all": {"type": "boolean", "default": True,
                              "description": "Let every authenticated user in (shared-password, oauth)."},
                "oauth": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "client_id": {"type": "string"},
                        "client_secret": {"type": "string"},
                        "authorize_url": {"type": "string"},
                        "token_url": {"type": "string"},
                        "userdata_url": {"type": "string"},
                        "username_claim": {"type": "string", "default": "preferred_username"},
                        "scope": {"type": "array", "items": {"type": "string"}},
                        "oauth_callback_url": {"type": "string"},
                        "manage_groups": {"type": "boolean", "default": False},
                        "auth_state_groups_key": {"type": "string"},
                    },
                    "required": ["client_id", "authorize_url", "token_url", "userdata_url"],
                },
            },
        },
        "users": {
            "type": "object",
            "additionalProperties": False,
            "default": {},
            "description": "Hub users' system accounts and groups (embedded mode).",
            "properties": {
                "system_user_prefix": {
                    "type": "string",
                    "pattern": "^[a-z_][a-z0-9_-]{0,15}$",
                    "default": "jupyter-",
                    "description": "Hub users run as system users named prefix+name (created on first spawn, as root).",
                },
                "home_root": {"type": "string", "default": "/home", "description": "Where system users' homes live."},
                "groups": {
                    "type": "object",
                    "additionalProperties": {"type": "array", "items": {"type": "string"}},
                    "default": {},
                    "description": "JupyterHub groups and their members, loaded at start.",
                },
            },
        },
        "scratch": {
            "type": "object",
            "additionalProperties": False,
            "default": {},
            "description": "Per-user fast scratch space.",
            "properties": {
                "root": {
                    "type": "string",
                    "default": "{state_dir}/scratch",
                    "description": "Directory on fast local disk (NVMe) holding one folder per user.",
                },
                "kubernetes": {
                    "type": "object",
                    "additionalProperties": False,
                    "default": {},
                    "properties": {
                        "mount_path": {"type": "string", "default": "/scratch"},
                        "storage_class": {"type": ["string", "null"], "default": None,
                                          "description": "Node-local storage class for the ephemeral volume; null: hostPath mode."},
                        "host_path_root": {"type": "string", "default": "/mnt/esker-scratch"},
                    },
                },
            },
        },
        "spark": {
            "type": "object",
            "additionalProperties": False,
            "default": {},
            "description": "Spark for the profiles with spark: true. Each such server runs its own standalone "
                           "master and worker, as its user, within its limits, with a secret of its own "
                           "(embedded: processes in the server's control group; Kubernetes: sidecars in its pod).",
            "properties": {
                "enabled": {"type": "boolean", "default": True},
                "master_url": {"type": ["string", "null"], "default": None,
                               "description": "An external master (spark://host:port) every session shares "
                                              "instead (no per-server cluster; its executors are not the "
                                              "users' accounts); null: each server runs its own."},
                "cores_per_user": {"type": "integer", "minimum": 1, "default": 1,
                                   "description": "Cores each server's own worker offers (with an external "
                                                  "master: spark.cores.max for each session)."},
                "executor_memory": {**SIZE, "default": "1G",
                                    "description": "Memory of the server's executor (what its worker offers)."},
                "driver_memory": {**SIZE, "default": "1G"},
            },
        },
        "gpus": {
            "type": "object",
            "additionalProperties": False,
            "default": {},
            "description": "GPUs handed to servers, one user per device.",
            "properties": {
                "devices": {
                    "oneOf": [
                        {"const": "auto"},
                        {"type": "array", "uniqueItems": True, "items": {"oneOf": [
                            {"type": "string", "pattern": "^[0-9]+$"},
                            {"type": "object", "additionalProperties": False, "required": ["id"], "properties": {
                                "id": {"type": "string", "pattern": "^[0-9]+$",
                                       "description": "NVML index: CUDA_VISIBLE_DEVICES and /dev/nvidia<id>."},
                                "type": {"type": "string", "minLength": 1, "description": "A key of gpus.types."},
                            }},
                        ]}},
                    ],
                    "default": "auto",
                    "description": "auto: the GPUs NVML reports, typed by gpus.types' products. A list of device "
                                   "indexes (or {id, type}) pins them; without a driver it exercises the allocator.",
                },
                "policy": {**GPU_POLICY, "default": {},
                           "properties": {
                               "idle_timeout": {**GPU_POLICY["properties"]["idle_timeout"], "default": 1800},
                               "max_runtime": {**GPU_POLICY["properties"]["max_runtime"], "default": 0},
                           },
                           "description": "The hub-wide GPU policy (a profile's gpu_policy overrides a field)."},
                "metrics_url": {"type": "string", "default": "",
                                "description": "Kubernetes: the DCGM exporter's metrics URL (e.g. "
                                               "http://nvidia-dcgm-exporter.gpu-operator:9400/metrics), read for GPU "
                                               "use per server (metrics, the GPU policy). Empty: no GPU use on "
                                               "Kubernetes (the policy's max_runtime still applies)."},
                "metrics_interval": {"type": "integer", "minimum": 5, "default": 30,
                                     "description": "Seconds between reads of GPU use (NVML or the DCGM exporter)."},
                "resource_name": {"type": "string", "default": "nvidia.com/gpu"},
                "types": {
                    "type": "object",
                    "default": {},
                    "description": "GPU types: on one machine, the NVML product names of each; on Kubernetes, "
                                   "the node selector and tolerations of each.",
                    "additionalProperties": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "display_name": {"type": "string"},
                            "products": {"type": "array", "items": {"type": "string", "minLength": 1},
                                         "description": "NVML product names of this type (shell patterns, case "
                                                        "ignored, such as 'NVIDIA A100*'). Default: the display_name."},
                            "node_selector": {"type": "object", "additionalProperties": {"type": "string"}},
                            "tolerations": {"type": "array", "items": {"type": "object"}},
                        },
                    },
                },
            },
        },
        "storage": {
            "type": "object",
            "default": {},
            "description": "Object storage (S3 on Ceph RGW).",
            "additionalProperties": False,
            "properties": {
                "enabled": {"type": "boolean", "default": False},
                "endpoint": {"type": ["string", "null"], "default": None,
                             "description": "External RGW endpoint; null: start the embedded Ceph."},
                "region": {"type": "string", "default": "default"},
                "admin_access_key": {"type": ["string", "null"], "default": None},
                "admin_secret_key": {"type": ["string", "null"], "default": None},
                "bucket_prefix": {"type": "string", "default": "esker-",
                                  "pattern": r"^([a-z0-9]([a-z0-9]|-(?!-)){0,28}[a-z0-9-]?)?$",
                                  "description": "Prefix of every user's RGW uid and personal bucket (lowercase, "
                                  "digits, single hyphens)."},
                "timeout": {"type": "number", "exclusiveMinimum": 0, "default": 5,
                            "description": "Seconds a spawn waits for object storage before going on without it "
                            "(or refusing, for profiles with storage: required)."},
                "start_wait": {"type": "number", "minimum": 0, "default": 60,
                               "description": "Seconds a spawn waits, with progress messages, for the embedded "
                               "Ceph while the hub is still starting it (about 8 s after the hub starts); 0: do "
                               "not wait. A gateway that is down, not starting, is never waited for."},
                "user_max_buckets": {"type": "integer", "minimum": 1, "default": 1,
                                     "description": "Buckets each user may own, the personal one included. "
                                     "1 stops users from creating (squatting) other bucket names."},
                "writer_groups": {**GROUPS, "default": ["instructors"],
                                  "description": "Groups that may write every shared dataset (instructors), "
                                  "besides hub admins and each dataset's writers."},
                "embedded": {
                    "type": "object",
                    "additionalProperties": False,
                    "default": {},
                    "description": "The embedded single-node Ceph (used when endpoint is null).",
                    "properties": {
                        "objectstore": {"enum": ["bluestore", "memstore"], "default": "bluestore",
                                        "description": "bluestore: a sparse file under $ESKER_STATE_DIR/ceph "
                                        "(persistent); memstore: RAM (lost at stop)."},
                        "size": {**SIZE, "default": "10G", "description": "Capacity (sparse bluestore file)."},
                        "port": {**PORT, "default": 7480, "description": "radosgw port on 127.0.0.1."},
                        "mon_port": {**PORT, "default": 3300, "description": "Ceph monitor port (fixed at creation)."},
                        "ms_port_min": {**PORT, "default": 6800, "description": "Lowest port the OSD binds."},
                        "ms_port_max": {**PORT, "default": 6830, "description": "Highest port the OSD binds."},
                    },
                },
                "datasets": {
                    "type": "array",
                    "default": [],
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "bucket"],
                        "properties": {
                            "name": SLUG,
                            "bucket": {"type": "string"},
                            "prefix": {"type": "string", "default": ""},
                            "groups": GROUPS,
                            "writers": GROUPS,
                        },
                    },
                },
            },
        },
        "kubernetes": {
            "type": "object",
            "additionalProperties": False,
            "default": {},
            "description": "Settings used only by the Kubernetes backend.",
            "properties": {
                "namespace": {"type": "string", "default": "esker"},
                "spark_mode": {"enum": ["standalone", "kubernetes"], "default": "standalone"},
                "s3_endpoint": {"type": ["string", "null"], "default": None},
            },
        },
        "profiles": {
            "type": "array",
            "minItems": 1,
            "items": PROFILE,
            "description": "The notebook profiles users pick from.",
        },
    },
}

# --------------------------------------------------------------------------- courses and capacity (additive)
ISO_DATETIME = {
    "type": "string",
    "pattern": r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$",
    "description": "An ISO 8601 date and time such as 2026-11-17T09:00 or 2026-11-17T09:00+01:00 "
    "(no offset: the hub's local time).",
}

COURSE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "group"],
    "properties": {
        "name": {**SLUG, "description": "Course identifier; participants find its content in ~/<name>/: "
                 + SLUG["description"] + "."},
        "display_name": {"type": "string", "minLength": 1, "description": "Shown to participants."},
        "group": {"type": "string", "minLength": 1,
                  "description": "JupyterHub group of the participants (created at start if missing)."},
        "instructors": {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True,
                        "default": [],
                        "description": "Hub users who may manage the course and reach its participants' servers."},
        "participants": {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True,
                         "default": [],
                         "description": "Initial members of the course group (more can be added at run time)."},
        "content": {
            "type": "object",
            "additionalProperties": False,
            "default": {},
            "description": "Notebooks copied into each participant's ~/<name>/ at every spawn (nbgitpuller's "
            "merge rules: the participant's edits are kept).",
            "properties": {
                "path": {"type": "string", "minLength": 1,
                         "description": "A folder under notebooks/ (relative) or an absolute path."},
                "git": {"type": "string", "minLength": 1, "description": "A git URL (https://, file://, ssh)."},
                "ref": {"type": "string", "minLength": 1, "default": "HEAD",
                        "description": "Branch, tag or commit of the git source."},
                "subdir": {"type": "string", "default": "", "description": "Folder inside the git repository."},
            },
        },
        "datasets": {"type": "array", "items": SLUG, "uniqueItems": True, "default": [],
                     "description": "Names from storage.datasets linked into the course folder as data/ "
                     "(read-only for participants, writable for instructors)."},
        "profiles": {"type": "array", "items": SLUG, "uniqueItems": True, "default": [],
                     "description": "Profile slugs participants use for this course. Empty: any profile."},
        "password": {"type": ["string", "null"], "default": None,
                     "description": "Optional course password participants give once to join the group "
                     "(POST /services/esker-courses/api/courses/<name>/join)."},
        "window": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "default": None,
            "required": ["start", "end"],
            "description": "When the course runs (a reservation of seats is made for it at start).",
            "properties": {"start": ISO_DATETIME, "end": ISO_DATETIME},
        },
        "seats": {"type": "integer", "minimum": 0, "default": 0,
                  "description": "Servers reserved for participants during the window (0: no reservation)."},
        "idle_timeout": {"type": "integer", "minimum": 60, "default": 3600,
                         "description": "Seconds after which an idle participant's server is stopped."},
        "prestart_lead": {"type": "integer", "minimum": 0, "maximum": 86400, "default": 600,
                          "description": "Seconds before a reservation's window opens when the esker-courses service "
                          "starts the booked participants' servers with the reserved profile (course content merged, "
                          "datasets linked, as at a normal spawn), so a participant who logs in finds it running. At "
                          "most the reservation's seats are started; participants added at run time are started at "
                          "the next pass; a failed start is retried with a backoff until the window opens. 0: no "
                          "pre-start (servers start when participants log in)."},
        "prestart_grace": {"type": "integer", "minimum": 0, "maximum": 86400, "default": 900,
                           "description": "Seconds after the window opens during which a pre-started server is kept "
                           "from the idle cullers (the course's idle_timeout and the hub-wide culler) even if nobody "
                           "has used it yet; after that it is culled like any other."},
    },
}

CAPACITY = {
    "type": "object",
    "additionalProperties": False,
    "default": {},
    "description": "What this hub can run at once, for reservations and seat checks. Unset: from the machine "
    "(CPU count, memory, GPUs configured, free space under scratch.root).",
    "properties": {
        "cpu": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None, "description": "CPU cores."},
        "memory": {"oneOf": [SIZE, {"type": "null"}], "default": None, "description": "Memory (e.g. 256G)."},
        "gpus": {"type": ["integer", "null"], "minimum": 0, "default": None, "description": "GPUs."},
        "scratch": {"oneOf": [SIZE, {"type": "null"}], "default": None, "description": "Scratch space."},
    },
}

SCHEMA["properties"]["courses"] = {
    "type": "array",
    "default": [],
    "items": COURSE,
    "description": "Workshops and courses: a participant group, content, datasets, seats (docs/courses.md).",
}
SCHEMA["properties"]["capacity"] = CAPACITY

# --------------------------------------------------------------------------- functions (docs/functions.md)
SCHEMA["properties"]["functions"] = {
    "type": "object",
    "default": {},
    "additionalProperties": False,
    "description": "Functions: a notebook function published as an authenticated JSON endpoint, run as its "
    "owner's named server fn-<name> (docs/functions.md).",
    "properties": {
        "enabled": {"type": "boolean", "default": True,
                    "description": "Allow named servers fn-<name> and run the esker-functions service (the "
                    "activator, the publish API and the page at /services/esker-functions/). false: no named "
                    "servers at all."},
        "max_per_user": {"type": "integer", "minimum": 0, "default": 10,
                         "description": "Functions (named servers) each user may have, running or not; 0: no "
                         "limit. Admins too."},
        "start_wait": {"type": "number", "exclusiveMinimum": 0, "default": 60,
                       "description": "Seconds a call to a stopped function is held while it starts; then it is "
                       "answered 503 with Retry-After (the start goes on)."},
        "idle_timeout": {"type": "integer", "minimum": 0, "default": 900,
                         "description": "Seconds without a call after which a function's server is stopped (it "
                         "starts again at the next call); 0: the hub's idle culler alone (an hour)."},
        "publish_groups": {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True,
                           "default": [],
                           "description": "Groups whose members may publish functions (they get the custom scope "
                           "custom:esker-functions:publish); empty: every user may. Calling a function is decided "
                           "by its shares, not by this."},
        "cull_every": {"type": "integer", "minimum": 10, "default": 60,
                       "description": "Seconds between the functions service's looks for idle functions and "
                       "pulls of their call counters (for the hub's metrics)."},
        "broker": {
            "type": "object", "default": {}, "additionalProperties": False,
            "description": "Where async calls' tasks and results are kept. Without a url: a SQLite file in the "
            "owner's home, no extra server (embedded mode's default). With a Redis url (the Helm chart's default, "
            "its own Redis): the hub makes each start of a function server an ACL user of that Redis whose keys "
            "are the function's alone, hands it the password (a Secret's secretKeyRef on Kubernetes) and deletes "
            "the user at stop.",
            "properties": {
                "url": {"type": "string", "default": "",
                        "description": "redis://HOST[:PORT][/DB] or rediss:// (TLS), without credentials; empty: "
                        "SQLite."},
                "admin_user": {"type": "string", "default": "esker-hub", "pattern": "^[A-Za-z0-9._-]+$",
                               "description": "The Redis ACL user the hub manages function users with (it needs "
                               "ACL, SCAN and UNLINK)."},
                "password_env": {"type": "string", "default": "ESKER_FUNCTIONS_BROKER_PASSWORD",
                                 "pattern": "^[A-Z_][A-Z0-9_]*$",
                                 "description": "The hub's environment variable holding admin_user's password "
                                 "(never in this file: the config is not a secret)."},
            },
        },
    },
}
