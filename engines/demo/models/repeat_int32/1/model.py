"""repeat_int32 as Triton documents it, written against Triton's Python backend API.

For each element i of IN: wait DELAY[i] ms, then send a response with OUT = IN[i] and
IDX = i (only the outputs the client asked for). After the last element wait WAIT ms
and end the request with the final flag. Requests are answered on a small thread pool,
so ``execute`` returns at once and one slow request does not hold the others.
"""

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

_WORKERS = 16


class TritonPythonModel:
    def initialize(self, args):
        self._pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="repeat_int32")

    def execute(self, requests):
        for request in requests:
            self._pool.submit(self._repeat, request)
        return None

    def _repeat(self, request):
        sender = request.get_response_sender()
        values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
        delays = pb_utils.get_input_tensor_by_name(request, "DELAY").as_numpy()
        wait = pb_utils.get_input_tensor_by_name(request, "WAIT").as_numpy()
        if len(delays) != len(values):
            error = pb_utils.TritonError(
                f"DELAY has {len(delays)} elements but IN has {len(values)}: expected one "
                "delay per element",
                pb_utils.TritonError.INVALID_ARG,
            )
            sender.send(
                pb_utils.InferenceResponse(error=error),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )
            return
        wanted = set(request.requested_output_names())
        for index, (value, delay) in enumerate(zip(values, delays, strict=True)):
            if sender.is_cancelled():
                break
            time.sleep(int(delay) / 1000)
            outputs = []
            if "OUT" in wanted:
                outputs.append(pb_utils.Tensor("OUT", np.array([value], dtype=np.int32)))
            if "IDX" in wanted:
                outputs.append(pb_utils.Tensor("IDX", np.array([index], dtype=np.uint32)))
            sender.send(pb_utils.InferenceResponse(output_tensors=outputs))
        time.sleep(int(wait[0]) / 1000)
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self):
        self._pool.shutdown(wait=True, cancel_futures=True)
