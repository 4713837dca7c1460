// Loads a SavedModel with TensorFlow's C++ loader (the one TF Serving uses), tag "serve", and runs a
// signature on inputs given as serialized TensorProtos.
//
//   load_check <export_dir> <inputs_dir> <outputs_dir> [signature]
//
// reads <inputs_dir>/<input>.pb for every input of the signature (default serving_default), writes
// <outputs_dir>/<output>.pb for every output, prints one line per output. Exit code != 0 on failure.
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "tensorflow/cc/saved_model/loader.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor.pb.h"

namespace {

int Fail(const std::string& message) {
  std::cerr << "load_check: " << message << std::endl;
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) return Fail("usage: load_check <export_dir> <inputs_dir> <outputs_dir> [signature]");
  const std::string export_dir = argv[1], inputs_dir = argv[2], outputs_dir = argv[3];
  const std::string signature_name = argc > 4 ? argv[4] : "serving_default";

  tensorflow::SavedModelBundle bundle;
  tensorflow::Status status = tensorflow::LoadSavedModel(tensorflow::SessionOptions(), tensorflow::RunOptions(),
                                                         export_dir, {"serve"}, &bundle);
  if (!status.ok()) return Fail("LoadSavedModel failed: " + std::string(status.message()));

  const auto& signatures = bundle.meta_graph_def.signature_def();
  auto found = signatures.find(signature_name);
  if (found == signatures.end()) return Fail("no signature " + signature_name);
  const tensorflow::SignatureDef& signature = found->second;

  std::vector<std::pair<std::string, tensorflow::Tensor>> feeds;
  for (const auto& [name, info] : signature.inputs()) {
    std::ifstream file(inputs_dir + "/" + name + ".pb", std::ios::binary);
    if (!file) return Fail("missing input file for " + name);
    std::stringstream buffer;
    buffer << file.rdbuf();
    tensorflow::TensorProto proto;
    tensorflow::Tensor tensor;
    if (!proto.ParseFromString(buffer.str()) || !tensor.FromProto(proto)) return Fail("bad TensorProto for " + name);
    feeds.emplace_back(info.name(), tensor);
  }
  std::vector<std::string> output_names, fetches;
  for (const auto& [name, info] : signature.outputs()) {
    output_names.push_back(name);
    fetches.push_back(info.name());
  }
  std::vector<tensorflow::Tensor> outputs;
  status = bundle.session->Run(feeds, fetches, {}, &outputs);
  if (!status.ok()) return Fail("Session::Run failed: " + std::string(status.message()));

  for (size_t i = 0; i < outputs.size(); ++i) {
    tensorflow::TensorProto proto;
    outputs[i].AsProtoTensorContent(&proto);
    std::ofstream out(outputs_dir + "/" + output_names[i] + ".pb", std::ios::binary);
    if (!proto.SerializeToOstream(&out)) return Fail("cannot write output " + output_names[i]);
    std::cout << output_names[i] << " " << outputs[i].DebugString(8) << std::endl;
  }
  return 0;
}
