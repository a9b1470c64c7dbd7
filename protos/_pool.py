"""The private protobuf descriptor pool that inferd's generated modules use.

inferd's protos define the same ``inference.*`` symbols (``inference.
ServerLiveRequest``, ``inference.ModelConfig``, ...) as tritonclient's and
KServe's generated modules, which register theirs in protobuf's default
pool. Two different files defining the same symbols in one pool fail at
import time with "Couldn't build proto file into descriptor pool: duplicate
symbol 'inference.ServerLiveRequest'". ``inferd.protos.generate`` therefore
rewrites the generated code to add inferd's files to this pool instead, so
inferd can be imported in the same process as those packages, in any order.

Wire compatibility is unaffected: messages from both pools serialize to the
same bytes. A consequence is that inferd's messages are not found through
``descriptor_pool.Default()`` or ``symbol_database.Default()``; code that
needs to look them up by name (gRPC server reflection, for one) must be
given ``POOL``.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
