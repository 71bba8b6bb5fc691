"""The RayCluster CRD's schema (ray.io/v1) as KubeRay v1.1.0 and v1.7.0 serve it, cut down to the fields
deploy/k8s/raycluster.yaml can use, for validating the manifest without a Kubernetes API server.

Not vendored: no PyPI or npm package ships KubeRay's CRD, so this subset was written by hand from KubeRay's API
reference (RayCluster, HeadGroupSpec, WorkerGroupSpec of each release) and the Kubernetes core/v1 API (PodSpec,
Container, Probe, Volume, SecurityContext). Like the real structural schema under ``kubectl apply`` (strict
field validation), it rejects unknown fields: a field that is valid in Kubernetes but missing here fails too, and
must be added here from those references. Quantities and ports are ``x-kubernetes-int-or-string``.
"""

from __future__ import annotations

import copy
from typing import Any

VERSIONS = ("v1.1.0", "v1.7.0")

INT_OR_STRING: dict[str, Any] = {"anyOf": [{"type": "integer"}, {"type": "string"}]}
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|E|Ei)?$"
QUANTITY: dict[str, Any] = {"anyOf": [{"type": "integer"}, {"type": "number"},
                                      {"type": "string", "pattern": QUANTITY_PATTERN}]}
STR: dict[str, Any] = {"type": "string"}
BOOL: dict[str, Any] = {"type": "boolean"}
INT32: dict[str, Any] = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
STR_MAP: dict[str, Any] = {"type": "object", "additionalProperties": STR}


def obj(required: tuple[str, ...] = (), **props: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    return schema


def array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


RESOURCES = obj(limits={"type": "object", "additionalProperties": QUANTITY},
                requests={"type": "object", "additionalProperties": QUANTITY})
EXEC = obj(command=array(STR))
HTTP_GET = obj(("port",), path=STR, port=INT_OR_STRING, host=STR, scheme={"enum": ["HTTP", "HTTPS"]},
               httpHeaders=array(obj(("name", "value"), name=STR, value=STR)))
PROBE = obj(
    exec=EXEC, httpGet=HTTP_GET, tcpSocket=obj(("port",), port=INT_OR_STRING, host=STR),
    initialDelaySeconds=INT32, periodSeconds=INT32, timeoutSeconds=INT32, successThreshold=INT32,
    failureThreshold=INT32, terminationGracePeriodSeconds={"type": "integer"},
)
KEY_REF = obj(("key",), name=STR, key=STR, optional=BOOL)
ENV = obj(("name",), name=STR, value=STR, valueFrom=obj(
    secretKeyRef=KEY_REF, configMapKeyRef=KEY_REF,
    fieldRef=obj(("fieldPath",), fieldPath=STR, apiVersion=STR),
))
CAPABILITIES = obj(add=array(STR), drop=array(STR))
SECCOMP = obj(("type",), type={"enum": ["RuntimeDefault", "Localhost", "Unconfined"]}, localhostProfile=STR)
CONTAINER_SECURITY = obj(
    allowPrivilegeEscalation=BOOL, capabilities=CAPABILITIES, privileged=BOOL, readOnlyRootFilesystem=BOOL,
    runAsNonRoot=BOOL, runAsUser={"type": "integer"}, runAsGroup={"type": "integer"}, seccompProfile=SECCOMP,
)
POD_SECURITY = obj(
    runAsNonRoot=BOOL, runAsUser={"type": "integer"}, runAsGroup={"type": "integer"}, fsGroup={"type": "integer"},
    fsGroupChangePolicy={"enum": ["OnRootMismatch", "Always"]}, seccompProfile=SECCOMP,
    supplementalGroups=array({"type": "integer"}),
)
CONTAINER = obj(
    ("name",),
    name=STR, image=STR, imagePullPolicy={"enum": ["Always", "Never", "IfNotPresent"]},
    command=array(STR), args=array(STR), workingDir=STR, env=array(ENV),
    envFrom=array(obj(prefix=STR, secretRef=obj(name=STR, optional=BOOL), configMapRef=obj(name=STR, optional=BOOL))),
    ports=array(obj(("containerPort",), containerPort=INT32, name=STR, protocol={"enum": ["TCP", "UDP", "SCTP"]})),
    resources=RESOURCES, readinessProbe=PROBE, livenessProbe=PROBE, startupProbe=PROBE,
    lifecycle=obj(preStop=obj(exec=EXEC, httpGet=HTTP_GET), postStart=obj(exec=EXEC, httpGet=HTTP_GET)),
    securityContext=CONTAINER_SECURITY,
    volumeMounts=array(obj(("mountPath", "name"), name=STR, mountPath=STR, subPath=STR, readOnly=BOOL)),
)
VOLUME = obj(
    ("name",), name=STR,
    emptyDir=obj(medium=STR, sizeLimit=QUANTITY),
    configMap=obj(name=STR, defaultMode=INT32, optional=BOOL,
                  items=array(obj(("key", "path"), key=STR, path=STR, mode=INT32))),
    secret=obj(secretName=STR, defaultMode=INT32, optional=BOOL,
               items=array(obj(("key", "path"), key=STR, path=STR, mode=INT32))),
    persistentVolumeClaim=obj(("claimName",), claimName=STR, readOnly=BOOL),
)
POD_TEMPLATE = obj(
    metadata=obj(labels=STR_MAP, annotations=STR_MAP, name=STR, namespace=STR),
    spec=obj(
        ("containers",),
        containers=array(CONTAINER), initContainers=array(CONTAINER), volumes=array(VOLUME),
        shareProcessNamespace=BOOL, securityContext=POD_SECURITY, serviceAccountName=STR,
        nodeSelector=STR_MAP, terminationGracePeriodSeconds={"type": "integer"},
        restartPolicy={"enum": ["Always", "OnFailure", "Never"]},
        imagePullSecrets=array(obj(name=STR)),
        tolerations=array({"type": "object"}), affinity={"type": "object"},
    ),
)
SERVICE_TYPE = {"enum": ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]}


def schema(version: str) -> dict[str, Any]:
    """The subset of the RayCluster openAPIV3Schema of KubeRay ``version`` (one of VERSIONS)."""
    if version not in VERSIONS:
        raise ValueError(f"no RayCluster schema for KubeRay {version}: {VERSIONS}")
    template = copy.deepcopy(POD_TEMPLATE)
    head: dict[str, Any] = {
        "serviceType": SERVICE_TYPE, "enableIngress": BOOL, "rayStartParams": STR_MAP, "template": template,
        "headService": {"type": "object"},
    }
    worker: dict[str, Any] = {
        "groupName": STR, "replicas": INT32, "minReplicas": INT32, "maxReplicas": INT32, "numOfHosts": INT32,
        "rayStartParams": STR_MAP, "template": template,
        "scaleStrategy": obj(workersToDelete=array(STR)),
    }
    spec: dict[str, Any] = {
        "rayVersion": STR, "enableInTreeAutoscaling": BOOL, "suspend": BOOL,
        "autoscalerOptions": {"type": "object"}, "headServiceAnnotations": STR_MAP,
    }
    head_required: tuple[str, ...] = ("rayStartParams", "template")  # v1.1: rayStartParams required
    worker_required: tuple[str, ...] = ("groupName", "maxReplicas", "minReplicas", "rayStartParams", "template")
    if version == "v1.7.0":  # rayStartParams optional; group labels/resources, suspend, idle timeout and more
        head_required, worker_required = ("template",), ("groupName", "maxReplicas", "minReplicas", "template")
        head.update(labels=STR_MAP, resources=STR_MAP, ingressOptions={"type": "object"})
        worker.update(labels=STR_MAP, resources=STR_MAP, suspend=BOOL, idleTimeoutSeconds=INT32, priority=INT32)
        spec.update(managedBy=STR, gcsFaultToleranceOptions={"type": "object"}, upgradeStrategy={"type": "object"},
                    authOptions={"type": "object"}, tlsOptions={"type": "object"}, networkPolicy={"type": "object"},
                    historyServerOptions={"type": "object"})
    spec["headGroupSpec"] = obj(head_required, **head)
    spec["workerGroupSpecs"] = array(obj(worker_required, **worker))
    return obj(
        ("apiVersion", "kind", "metadata", "spec"),
        apiVersion={"const": "ray.io/v1"}, kind={"const": "RayCluster"},
        metadata=obj(("name",), name={"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                     namespace=STR, labels=STR_MAP, annotations=STR_MAP),
        spec=obj(("headGroupSpec",), **spec),
    )


def errors(manifest: dict[str, Any], version: str) -> list[str]:
    """Every schema violation of one RayCluster document, as ``path: message`` lines (empty when valid)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema(version))
    return sorted(f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
                  for e in validator.iter_errors(manifest))
