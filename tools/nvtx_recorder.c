/* An NVTX injection library that writes every range push and pop to a file: the NVTX ranges a
 * program emits, checked without nsys (which the GPU machine cannot run to a report).
 *
 *   gcc -shared -fPIC -O2 -I/usr/local/cuda/include -o nvtx_recorder.so tools/nvtx_recorder.c
 *   NVTX_INJECTION64_PATH=$PWD/nvtx_recorder.so NVTX_RECORD=ranges.txt python3 main.py ...
 *
 * NVTX's own loader (nvtx3/nvtxDetail/nvtxInit.h) opens the library named by
 * NVTX_INJECTION64_PATH at a program's first NVTX call and calls InitializeInjectionNvtx2,
 * which installs the callbacks below. One line per event, in the order of the calls:
 *   push <domain> <message>      (domain "-" for the global one; registered strings resolved)
 *   pop <domain>
 */
#include <nvtx3/nvToolsExt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static FILE *out;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

/* Domain and registered-string handles are pointers to copies of their names. */
static const char *domain_name(nvtxDomainHandle_t domain) {
  return domain ? (const char *)domain : "-";
}

static void record(const char *event, const char *domain, const char *message) {
  pthread_mutex_lock(&lock);
  if (message)
    fprintf(out, "%s %s %s\n", event, domain, message);
  else
    fprintf(out, "%s %s\n", event, domain);
  fflush(out);
  pthread_mutex_unlock(&lock);
}

static const char *message_of(const nvtxEventAttributes_t *attributes) {
  if (!attributes) return "";
  switch (attributes->messageType) {
    case NVTX_MESSAGE_TYPE_ASCII: return attributes->message.ascii;
    case NVTX_MESSAGE_TYPE_REGISTERED: return (const char *)attributes->message.registered;
    default: return "(unicode or unknown)";
  }
}

static nvtxDomainHandle_t NVTX_API domain_create(const char *name) {
  return (nvtxDomainHandle_t)strdup(name);
}

static nvtxStringHandle_t NVTX_API register_string(nvtxDomainHandle_t domain, const char *text) {
  (void)domain;
  return (nvtxStringHandle_t)strdup(text);
}

static int NVTX_API domain_push(nvtxDomainHandle_t domain, const nvtxEventAttributes_t *attr) {
  record("push", domain_name(domain), message_of(attr));
  return 0;
}

static int NVTX_API domain_pop(nvtxDomainHandle_t domain) {
  record("pop", domain_name(domain), NULL);
  return 0;
}

static int NVTX_API push_ascii(const char *message) {
  record("push", "-", message);
  return 0;
}

static int NVTX_API push_ex(const nvtxEventAttributes_t *attr) {
  record("push", "-", message_of(attr));
  return 0;
}

static int NVTX_API pop(void) {
  record("pop", "-", NULL);
  return 0;
}

static int install(const NvtxExportTableCallbacks *callbacks, NvtxCallbackModule module,
                   const unsigned int *ids, NvtxFunctionPointer *functions, int count) {
  NvtxFunctionTable table = 0;
  unsigned int size = 0;
  if (!callbacks->GetModuleFunctionTable(module, &table, &size) || !table) return 0;
  for (int i = 0; i < count; i++) {
    if (ids[i] > size) return 0;
    *table[ids[i]] = functions[i];
  }
  return 1;
}

NVTX_DYNAMIC_EXPORT int InitializeInjectionNvtx2(NvtxGetExportTableFunc_t get_export_table) {
  const char *path = getenv("NVTX_RECORD");
  out = fopen(path ? path : "nvtx_ranges.txt", "w");
  if (!out) return 0;
  const NvtxExportTableCallbacks *callbacks =
      (const NvtxExportTableCallbacks *)get_export_table(NVTX_ETID_CALLBACKS);
  if (!callbacks) return 0;
  unsigned int core_ids[] = {NVTX_CBID_CORE_RangePushA, NVTX_CBID_CORE_RangePushEx,
                             NVTX_CBID_CORE_RangePop};
  NvtxFunctionPointer core[] = {(NvtxFunctionPointer)push_ascii, (NvtxFunctionPointer)push_ex,
                                (NvtxFunctionPointer)pop};
  unsigned int core2_ids[] = {NVTX_CBID_CORE2_DomainCreateA,
                              NVTX_CBID_CORE2_DomainRegisterStringA,
                              NVTX_CBID_CORE2_DomainRangePushEx, NVTX_CBID_CORE2_DomainRangePop};
  NvtxFunctionPointer core2[] = {(NvtxFunctionPointer)domain_create,
                                 (NvtxFunctionPointer)register_string,
                                 (NvtxFunctionPointer)domain_push,
                                 (NvtxFunctionPointer)domain_pop};
  return install(callbacks, NVTX_CB_MODULE_CORE, core_ids, core, 3) &&
         install(callbacks, NVTX_CB_MODULE_CORE2, core2_ids, core2, 4);
}
