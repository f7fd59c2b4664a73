# FleetLoop robot image for NVIDIA Jetson (JetPack 6 / L4T r36, aarch64, ROS 2 Humble).
#
#   docker build -f docker/jetson.Dockerfile -t fleetloop/robot:jetson .
#   docker run --rm --runtime nvidia --network host --ipc host fleetloop/robot:jetson \
#       ros2 launch /ws/launch/robot.launch.py robot_id:=jetson-3 use_gpu:=true
#
# onnxruntime-gpu for Jetson comes from NVIDIA's Jetson AI Lab index (PyPI has no aarch64 CUDA
# wheel); TensorRT is part of JetPack. Not buildable on the CI machines (no Docker engine).
ARG BASE_IMAGE=dustynv/ros:humble-ros-base-l4t-r36.2.0
FROM ${BASE_IMAGE}

ARG ORT_INDEX=https://pypi.jetson-ai-lab.dev/jp6/cu122
# the DDS transport comes from config/robot.yaml's dds section (no FASTDDS_* variable here)
ENV FLEETLOOP_HOME=/var/fleetloop

COPY requirements/robot.txt /tmp/robot.txt
# numpy < 2: the distro's message packages (and our rosidl build) are compiled against its numpy 1.x
RUN pip3 install --no-cache-dir -r /tmp/robot.txt "numpy<2" \
 && pip3 uninstall -y onnxruntime opencv-contrib-python-headless \
 && pip3 install --no-cache-dir --extra-index-url ${ORT_INDEX} onnxruntime-gpu opencv-contrib-python-headless "numpy<2"

WORKDIR /ws
COPY colcon.meta /ws/colcon.meta
COPY ros2_ws/src /ws/src
COPY launch /ws/launch
COPY config /ws/config
RUN . /opt/ros/humble/install/setup.sh \
 && colcon build --merge-install --base-paths src --metas /ws/colcon.meta \
 && rm -rf /ws/build /ws/log

CMD ["bash", "-lc", "source /ws/install/setup.bash && ros2 launch /ws/launch/robot.launch.py use_gpu:=true"]
