"""A per-sequence accumulator written against Triton's Python backend API.

START sets the sequence's sum to INPUT, every later step adds INPUT, and END also adds
the integer value of the correlation id, then forgets the sequence. OUTPUT is the sum
after the step. A correlation id that is not an integer fails that request with
INVALID_ARG. The sequence batcher runs every step of a sequence on this instance, in
order, so plain per-instance state is enough.
"""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self._sums = {}

    def execute(self, requests):
        return [self._step(request) for request in requests]

    def _step(self, request):
        correlation_id = request.correlation_id()
        flags = request.flags()
        try:
            number = int(correlation_id)
        except ValueError:
            self._sums.pop(correlation_id, None)
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(
                    f"correlation id '{correlation_id}' is not an integer: this model "
                    "adds its value at the end of the sequence",
                    pb_utils.TritonError.INVALID_ARG,
                )
            )
        value = int(pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy().sum())
        if flags & pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START:
            total = value
        else:
            total = self._sums.get(correlation_id, 0) + value
        if flags & pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END:
            total += number
            self._sums.pop(correlation_id, None)
        else:
            self._sums[correlation_id] = total
        output = pb_utils.Tensor("OUTPUT", np.array([[total]], dtype=np.int32))
        return pb_utils.InferenceResponse(output_tensors=[output])
