# FleetLoop robot image: ROS 2 + onnxruntime-gpu (TensorRT -> CUDA -> CPU) + our workspace built with colcon.
#
#   docker build -f docker/robot.Dockerfile -t fleetloop/robot:humble .
#   docker run --rm --gpus all --network host --ipc host \
#       -v /var/lib/fleetloop:/var/lib/fleetloop -v /etc/fleetloop:/etc/fleetloop \
#       -v $PWD/models:/ws/models -v $PWD/config/robot-7.yaml:/ws/config/robot.yaml \
#       fleetloop/robot:humble \
#       ros2 launch /ws/launch/robot.launch.py robot_id:=robot-7 namespace:=/robot7 \
#           image_topics:=/camera/color/image_raw store_uri:=s3://fleet-frames/site-a use_gpu:=true
# (docs/robot.md; the launch arguments are the options of `fleetloop robot`.)
#
# Not buildable on the CI machines (no container engine runs there, and a build needs the network
# for its base image); kept correct by review and by the tests that import the same packages with
# the same requirements (requirements/robot.txt).
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04
FROM ${CUDA_IMAGE}

ARG ROS_DISTRO=humble
ARG ONNXRUNTIME_GPU=1.20.1
# The DDS transport is chosen by config/robot.yaml's dds section (launch argument transport:=...),
# applied before rclpy initialises: no FASTDDS_* variable here (one would override it with a warning).
ENV DEBIAN_FRONTEND=noninteractive \
    ROS_DISTRO=${ROS_DISTRO} \
    LANG=C.UTF-8 \
    FLEETLOOP_HOME=/var/fleetloop

# ROS 2 from packages.ros.org; build-essential, cmake and python3-dev for the colcon build of
# fleetloop_interfaces (ament_cmake + rosidl compile C and a Python extension)
RUN apt-get update && apt-get install -y --no-install-recommends curl gnupg2 lsb-release ca-certificates \
 && curl -sSL https://raw.githubusercontent.com/ros/rosdistro/master/ros.key -o /usr/share/keyrings/ros-archive-keyring.gpg \
 && echo "deb [arch=$(dpkg --print-architecture) signed-by=/usr/share/keyrings/ros-archive-keyring.gpg] http://packages.ros.org/ros2/ubuntu $(lsb_release -cs) main" \
      > /etc/apt/sources.list.d/ros2.list \
 && apt-get update && apt-get install -y --no-install-recommends \
      ros-${ROS_DISTRO}-ros-base ros-${ROS_DISTRO}-sensor-msgs ros-${ROS_DISTRO}-diagnostic-msgs \
      ros-${ROS_DISTRO}-std-srvs ros-${ROS_DISTRO}-lifecycle-msgs ros-${ROS_DISTRO}-rosidl-default-generators \
      ros-${ROS_DISTRO}-launch-ros ros-${ROS_DISTRO}-rosbag2-storage-mcap \
      python3-pip python3-colcon-common-extensions python3-numpy \
      build-essential cmake python3-dev \
 && rm -rf /var/lib/apt/lists/*

# Python runtime; onnxruntime-gpu replaces the CPU wheel (CUDA 12 build, TensorRT EP included)
COPY requirements/robot.txt /tmp/robot.txt
# numpy < 2: the distro's message packages (and our rosidl build) are compiled against its numpy 1.x
RUN pip3 install --no-cache-dir -r /tmp/robot.txt "numpy<2" \
 && pip3 uninstall -y onnxruntime \
 && pip3 install --no-cache-dir "onnxruntime-gpu==${ONNXRUNTIME_GPU}" "tensorrt-cu12==10.7.*"
# tensorrt-cu12 puts libnvinfer* under site-packages/tensorrt_libs, off the loader path: without this
# the TensorRT execution provider fails to load and ONNX Runtime falls back to CUDA (our inference
# module then logs a WARNING naming both). The build fails here if the library still cannot be loaded.
RUN python3 -c "import os, tensorrt_libs; print(os.path.dirname(tensorrt_libs.__file__))" \
      > /etc/ld.so.conf.d/tensorrt-wheel.conf \
 && ldconfig \
 && python3 -c "import ctypes; ctypes.CDLL('libnvinfer.so.10'); print('libnvinfer loads')"

WORKDIR /ws
COPY colcon.meta /ws/colcon.meta
COPY ros2_ws/src /ws/src
COPY launch /ws/launch
COPY config /ws/config
# fleetloop_interfaces (rosidl messages and services), fleetloop_core and fleetloop_ros (ament_python)
RUN . /opt/ros/${ROS_DISTRO}/setup.sh \
 && colcon --log-base /ws/log build --merge-install --base-paths src --metas /ws/colcon.meta \
 && rm -rf /ws/build /ws/log

RUN printf '#!/bin/bash\nset -e\nsource /opt/ros/%s/setup.bash\nsource /ws/install/setup.bash\nexec "$@"\n' "${ROS_DISTRO}" \
      > /ros_entrypoint.sh && chmod +x /ros_entrypoint.sh
ENTRYPOINT ["/ros_entrypoint.sh"]
CMD ["ros2", "launch", "/ws/launch/robot.launch.py"]
