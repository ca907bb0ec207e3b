// The Python module `dchml.ops._kernels` (loaded by dchml/ops/library.py). Importing it runs the static TORCH_LIBRARY registrations of
// every operator in csrc/ops/; the module itself only reports how it was built.
#include <Python.h>

namespace {

PyObject* with_cuda(PyObject*, PyObject*) {
#ifdef WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

PyMethodDef methods[] = {
    {"with_cuda", with_cuda, METH_NOARGS, "True when the CUDA kernels were compiled in."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_kernels", "dchml compiled operators", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module_def); }
